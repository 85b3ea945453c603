from tchat.cli import main

main()
