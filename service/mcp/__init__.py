"""Remote MCP tools run by the gateway: the client (`client`), the request's servers and their tools (`tools`)."""
