from vtr.cli import main

main()
