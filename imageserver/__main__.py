from imageserver.bulk.cli import main

main()
