// Mint one-time credentials through a provider's front door, fast enough for the loads
// of bench/side_by_side.py: run the authorization code flow (PKCE S256) as a signed-in
// browser would, following the provider's own redirects with its cookies, until it
// redirects to the client; optionally exchange the code for tokens. Node's fetch keeps
// the minting client cheap, so the providers' speed is what bounds it.
//   node mint.mjs <json config>   -> one line per credential on stdout
// config: {base, authorize, token, client_id, client_secret, redirect_uri, challenge,
//          verifier, cookie, count, concurrency, kind: "codes" | "tokens"}
const config = JSON.parse(process.argv[2]);
const auth = "Basic " + Buffer.from(`${config.client_id}:${config.client_secret}`).toString("base64");

function jar(initial) {
  const cookies = new Map();
  for (const part of (initial || "").split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name) cookies.set(name, rest.join("="));
  }
  return {
    header: () => [...cookies].map(([k, v]) => `${k}=${v}`).join("; "),
    take(response) {
      for (const line of response.headers.getSetCookie()) {
        const [pair] = line.split(";");
        const [name, ...rest] = pair.split("=");
        cookies.set(name.trim(), rest.join("="));
      }
    },
  };
}

async function code() {
  const cookies = jar(config.cookie);
  const query = new URLSearchParams({
    response_type: "code", client_id: config.client_id, redirect_uri: config.redirect_uri,
    scope: "openid profile email", state: Math.random().toString(36).slice(2),
    nonce: Math.random().toString(36).slice(2), code_challenge: config.challenge,
    code_challenge_method: "S256",
  });
  let url = `${config.base}${config.authorize}?${query}`;
  for (let hop = 0; hop < 8; hop++) {
    const response = await fetch(url, { redirect: "manual", headers: { cookie: cookies.header() } });
    cookies.take(response);
    await response.arrayBuffer();
    const location = response.headers.get("location");
    if (!location) throw new Error(`no redirect from ${url}: ${response.status}`);
    if (location.startsWith(config.redirect_uri)) return new URL(location).searchParams.get("code");
    url = new URL(location, url).toString();
  }
  throw new Error("too many redirects");
}

async function tokens() {
  const response = await fetch(`${config.base}${config.token}`, {
    method: "POST",
    headers: { authorization: auth, "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code", code: await code(), redirect_uri: config.redirect_uri,
      code_verifier: config.verifier,
    }),
  });
  const body = await response.json();
  if (!body.refresh_token) throw new Error(`exchange failed: ${JSON.stringify(body)}`);
  return `${body.access_token} ${body.refresh_token}`;
}

let next = 0;
const out = [];
async function worker() {
  while (next < config.count) {
    next += 1;
    out.push(config.kind === "codes" ? await code() : await tokens());
    if (out.length % 500 === 0) process.stderr.write(`${out.length}\n`);
  }
}
await Promise.all(Array.from({ length: config.concurrency || 16 }, worker));
process.stdout.write(out.join("\n") + "\n");
