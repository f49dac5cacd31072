"""One module per subcommand: register(subparsers) and a run(args) it points to."""
