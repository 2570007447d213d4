"""The commands besides Lightning's fit/validate/test/predict, one module each. Every module has
``HELP`` (one line for ``--help``) and ``add_arguments(parser)``, which sets ``run`` on the parsed
namespace (on each subcommand's parser where it has subcommands); ``cli.COMMANDS`` lists them."""
