from lmforge.cli.main import main

main()
