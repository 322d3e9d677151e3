import sys

from gateway.cli import main

sys.exit(main(["gateway", *sys.argv[1:]]))
