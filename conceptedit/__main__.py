from conceptedit.cli import main

main()
