// The baseline for Iris's exchange benchmark: what the Ory cookbook's "custom session exchange
// endpoint" does. A small Node service takes a Kratos session token, asks Kratos's
// /sessions/whoami for the session on every request, and signs a JWT with the `jose` package.
//
// It is written to be as fast as such a service can reasonably be, so the comparison is fair to
// it: node:http rather than a framework, a keep-alive agent to Kratos, the key imported once.
// It does less than Iris per request: no client authentication, no policy, one token (Iris signs
// an access token and an ID token).
//
// Environment: PORT (default 4490), KRATOS_URL (default http://127.0.0.1:4433), KEY_FILE (a
// private ES256 JWK, e.g. from `iris keys generate`), ISSUER, AUDIENCE.
//
// POST any path with an application/x-www-form-urlencoded body carrying `subject_token`
// (the RFC 8693 form Iris takes); answers {access_token, issued_token_type, token_type, expires_in}.

import { createServer, Agent, request } from "node:http";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { SignJWT, importJWK } from "jose";

const port = Number(process.env.PORT ?? 4490);
const kratos = new URL("/sessions/whoami", process.env.KRATOS_URL ?? "http://127.0.0.1:4433");
const issuer = process.env.ISSUER ?? `http://127.0.0.1:${port}/`;
const audience = process.env.AUDIENCE ?? "https://orders.example.com";
const jwk = JSON.parse(readFileSync(process.env.KEY_FILE, "utf8"));
const key = await importJWK(jwk, "ES256");
const agent = new Agent({ keepAlive: true, maxSockets: 512 });
const TTL = 15 * 60;

// GET /sessions/whoami with X-Session-Token: [status, parsed body].
function whoami(token) {
  return new Promise((resolve, reject) => {
    const req = request(
      kratos,
      { agent, headers: { "x-session-token": token, accept: "application/json" } },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          try {
            resolve([res.statusCode, JSON.parse(Buffer.concat(chunks).toString("utf8"))]);
          } catch (e) {
            reject(e);
          }
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end();
  });
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "cache-control": "no-store",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

async function exchange(body, res) {
  const token = new URLSearchParams(body).get("subject_token");
  if (!token) return reply(res, 400, { error: "invalid_request" });
  const [status, session] = await whoami(token);
  if (status !== 200 || !session.active) return reply(res, 401, { error: "unauthorized" });
  const now = Math.floor(Date.now() / 1000);
  const expiresAt = Math.floor(Date.parse(session.expires_at) / 1000);
  const exp = Math.min(now + TTL, expiresAt);
  const accessToken = await new SignJWT({
    sid: session.id,
    email: session.identity?.traits?.email,
  })
    .setProtectedHeader({ alg: "ES256", kid: jwk.kid, typ: "at+jwt" })
    .setIssuer(issuer)
    .setSubject(session.identity.id)
    .setAudience(audience)
    .setIssuedAt(now)
    .setExpirationTime(exp)
    .setJti(randomUUID())
    .sign(key);
  reply(res, 200, {
    access_token: accessToken,
    issued_token_type: "urn:ietf:params:oauth:token-type:access_token",
    token_type: "Bearer",
    expires_in: exp - now,
  });
}

const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    exchange(Buffer.concat(chunks).toString("utf8"), res).catch(() =>
      reply(res, 503, { error: "temporarily_unavailable" }),
    );
  });
});
server.keepAliveTimeout = 65_000;
server.listen(port, "127.0.0.1", () => {
  console.log(`cookbook exchange baseline on http://127.0.0.1:${port}`);
});
