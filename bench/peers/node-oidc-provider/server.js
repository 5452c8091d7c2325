// node-oidc-provider, configured as a production provider would be for this comparison:
// one confidential client, opaque access tokens, refresh tokens rotated on use,
// introspection and client credentials on, in process memory (below), one process.
// Interactions are answered at once for the one bench user (the provider's own login and
// consent pages are not what is measured), so credentials are minted through its front
// door: /auth, the interaction, /auth/:uid resume, the redirect with the code.
import { generateKeyPairSync } from "node:crypto";
import Provider from "oidc-provider";

const port = Number(process.env.PORT || 3000);
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: "jwk" }), kid: "bench", use: "sig", alg: "RS256" };

// The provider's own in-memory adapter keeps at most 1,000 entries (an LRU): a benchmark's
// tens of thousands of grants and tokens would evict the grants of live refresh tokens
// ("grant request is invalid"). This is the same store, in process memory, without the
// cap: a Map per model with each entry's expiry, and the grant and user-code indexes.
const store = new Map();
const expired = (entry) => entry && entry.expiresAt && entry.expiresAt < Date.now();

class MemoryAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : undefined;
    store.set(this.key(id), { payload, expiresAt });
    if (payload.grantId) {
      const grant = `grant:${payload.grantId}`;
      if (!store.has(grant)) store.set(grant, { payload: new Set() });
      store.get(grant).payload.add(this.key(id));
    }
    if (payload.userCode) store.set(`userCode:${payload.userCode}`, { payload: id, expiresAt });
    if (payload.uid) store.set(`uid:${payload.uid}`, { payload: id, expiresAt });
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry || expired(entry)) return undefined;
    return entry.payload;
  }

  async findByUserCode(userCode) {
    const entry = store.get(`userCode:${userCode}`);
    return entry && !expired(entry) ? this.find(entry.payload) : undefined;
  }

  async findByUid(uid) {
    const entry = store.get(`uid:${uid}`);
    return entry && !expired(entry) ? this.find(entry.payload) : undefined;
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    const grant = store.get(`grant:${grantId}`);
    if (grant) for (const key of grant.payload) store.delete(key);
    store.delete(`grant:${grantId}`);
  }
}

const provider = new Provider(issuer, {
  adapter: MemoryAdapter,
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
