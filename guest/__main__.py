# The entry point of the shipped program (a zip of this directory, run by python3).
import sys

from imgforge_vm.cli import main

sys.exit(main())
