from r1lite.cli.main import main

main()
