from fund.cli import main

main()
