from mimi_cli.cli import main

main()
