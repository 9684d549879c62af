"""The running stack as containers: one definition of its processes (`processes`), checked
against compose/compose.yaml and written out as Kubernetes manifests (`k8s`)."""
