// A real OpenID Provider for the SSO tests: the npm package oidc-provider (a certified implementation) with one
// confidential client and its development login form, where any login name is an e-mail address and any
// password is accepted. Arguments: port, client id, client secret, redirect URI. Prints "ready" once listening.
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, redirectUri] = process.argv.slice(2);
const provider = new Provider(`http://localhost:${port}`, {
  clients: [{
    client_id: clientId, client_secret: clientSecret, redirect_uris: [redirectUri],
    grant_types: ['authorization_code'], response_types: ['code'],
  }],
  pkce: { methods: ['S256'], required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['groups'] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: id, email_verified: true, groups: id.startsWith('ann') ? ['family'] : [] };
      },
    };
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['kakuremichi-test-cookie-key'] },
});
provider.listen(Number(port), () => console.log('ready'));
