"""The fleet of worlds one operator runs: the worlds under the worlds root (`worlds`), their builds
through a queue (`builds`) and their stacks, started and stopped (`stacks`). The operator's
gateway serves it (`sandbox.services.gateway.builder`, `.fleet`)."""
