"""The public gateway: HTTP(S) in, routed by Host/SNI through WireGuard to the tunnel's agent.

How the pieces fit (the daemon's job):

    routes, challenges = RouteTable(), ChallengeStore()
    certs = CertificateManager(CertStore(state_dir), challenges, AcmeSettings(directory_url, email))
    async with open_proxy(routes, dial, ProxySettings(...), challenges=challenges) as proxy:
        # dial(route) -> stream over the netstack; the proxy pools agent connections and times waits out
        await nursery.start(serve_http, proxy, http_port)
        await nursery.start(serve_https, proxy, certs.context, https_port)
        await nursery.start(certs.run)
        # on every config push:  routes.replace(new_routes); certs.update_routes(new_routes)
"""
