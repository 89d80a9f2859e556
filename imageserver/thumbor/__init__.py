"""thumbor's URLs: their grammar and signatures (`urls`), and the variant of
this server's grammar that answers each (`plan`). Plain functions: what a
thumbor URL means follows from its text and its source's size alone.
"""
