"""The command line: the composition root that starts the service, the edge and Envoy (`switchboard ...`).

Owns the `switchboard` entry point (`main`), the supervisor of `serve`, the lifeline that ties children to their
parent and the Envoy config renderer. The only package that imports both faces; nothing imports it.
"""
