from meshext.cli import main

main()
