// node-oidc-provider, configured as a production provider would be for this comparison:
// one confidential client, opaque access tokens, refresh tokens rotated on use,
// introspection and client credentials on, its in-memory adapter, one process.
// Interactions are answered at once for the one bench user (the provider's own login and
// consent pages are not what is measured), so credentials are minted through its front
// door: /auth, the interaction, /auth/:uid resume, the redirect with the code.
import { generateKeyPairSync } from "node:crypto";
import Provider from "oidc-provider";

const port = Number(process.env.PORT || 3000);
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: "jwk" }), kid: "bench", use: "sig", alg: "RS256" };

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: [process.env.REDIRECT_URI],
    grant_types: ["authorization_code", "refresh_token", "client_credentials"],
    response_types: ["code"],
    scope: "openid profile email",
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: [process.env.COOKIE_KEY || "bench-cookie-key-0123456789abcdef"] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.com`, email_verified: true, name: id }),
  }),
  claims: { openid: ["sub"], profile: ["name"], email: ["email", "email_verified"] },
  scopes: ["openid", "profile", "email"],
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed("refresh_token"),
  rotateRefreshToken: true,
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});

provider.use(async (ctx, next) => {
  if (ctx.method === "GET" && ctx.path.startsWith("/interaction/")) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const grant = new provider.Grant({ accountId: "bench-user", clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope);
    const grantId = await grant.save();
    ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, {
      login: { accountId: "bench-user" }, consent: { grantId },
    }, { mergeWithLastSubmission: false }));
    return;
  }
  await next();
});

provider.listen(port, "127.0.0.1", () => console.log(`listening ${issuer}`));
