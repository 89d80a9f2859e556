import os

#: The top of the checkout, whichever folder of tests/ asks.
CHECKOUT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
