from imageserver.cli import main

main()
