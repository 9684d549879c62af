"""`python -m sandbox.services.gateway --world DIR --port P`: the gateway process (`app`).

Started as the package rather than as `gateway.app`: multiprocessing imports the main module
again in every process it starts, unless that module is a package's `__main__`, and each of the
console's workers would otherwise import the whole gateway before it could take a query.
"""

from sandbox.services.gateway.app import main

main()
