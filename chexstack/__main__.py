from chexstack.cli import main

main()
