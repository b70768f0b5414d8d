// Package unsubscribe implements one-click unsubscription (RFC 8058) for
// campaign mail: the signed tokens that name a recipient, the
// List-Unsubscribe and List-Unsubscribe-Post header values that carry them,
// and the HTTP handler that receives the unsubscriptions.
//
// Contract:
//   - Headers gives List-Unsubscribe exactly one https URI (RFC 8058 §3.1),
//     first, optionally followed by a mailto URI, each in angle brackets and
//     comma-separated (RFC 2369 §2), and List-Unsubscribe-Post exactly
//     "List-Unsubscribe=One-Click" (RFC 8058 §3.1). Both values are single
//     lines of printable ASCII that fit RFC 5322's 998 octets without
//     folding. Signing both with DKIM (RFC 8058 §4) is the caller's job
//     (pkg/dkim covers them).
//   - The https URI is BASE/u/TOKEN. A one-click POST carries no cookie,
//     authorization or other context (RFC 8058 §3.2), so TOKEN alone names
//     the tenant, recipient, campaign, message and recipient index, and it
//     is the "hard-to-forge component" of RFC 8058 §3.1: a truncated
//     HMAC-SHA256 under a secret shared by the workers, which put tokens in
//     headers, and the HTTP listener, which checks them. Without the secret
//     nobody can make a token that parses, so nobody can unsubscribe an
//     address that was not sent a message carrying the token. A token is
//     signed, not encrypted: whoever holds it can decode the tenant and
//     address it names, which discloses nothing to the recipient whose
//     message carries it.
//   - The mailto URI is mailto:u+SHORT@DOMAIN?subject=unsubscribe. A local
//     part is at most 64 octets (RFC 5321 §4.5.3.1.1), too short for the
//     whole subject, so SHORT names only the message id and recipient index,
//     like a VERP return path, and its receiver looks up the rest in its
//     event store.
//   - Tokens are lower-case base32 (RFC 4648 alphabet, no padding) and are
//     parsed case-insensitively: they are safe in a URL path and in a mail
//     local part that relays may case-fold. Any other change to a token
//     makes it fail to parse (ErrInvalid). Tokens do not expire; replacing
//     the secret invalidates every token made with it, unless the old
//     secret is passed to NewSigner as a previous secret.
//   - Handler never unsubscribes on GET, because mail software and link
//     scanners fetch URLs found in mail (the reason RFC 8058 exists, §1): GET
//     shows a confirmation page whose form POSTs. A POST with the body
//     List-Unsubscribe=One-Click, form-urlencoded or multipart/form-data
//     (RFC 8058 §3.2), or with an empty body, unsubscribes at once, with no
//     cookie, login or further interaction. It answers 200 once the
//     Unsubscriber has succeeded, 503 when it failed (so the sender of the
//     POST may retry), 404 for a token that does not verify.
package unsubscribe
