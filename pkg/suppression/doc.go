// Package suppression keeps each tenant's suppression list: the addresses
// Send must not deliver to (hard bounces, complaints, unsubscribes, manual
// entries), each optionally expiring.
//
// Contract:
//   - Addresses compare in their Normalize form: trimmed, lower-cased, the
//     domain in IDNA A-label form. Every stored key is such a form, so an
//     address Normalize rejects is never suppressed.
//   - An entry whose ExpiresAt is not after the Store's clock is absent for
//     Get, Check, List and Remove, whether or not storage has dropped it yet.
//   - Add replaces any entry of the address; the last Add wins.
//   - List pages walk the tenant's entries in storage order. An entry present
//     for the whole listing is returned exactly once; one replaced during it
//     may be returned twice; one added or removed during it may or may not be.
//
// Storage: a JetStream KV bucket (Bucket) keeping one value per key, the
// proto encoding of postflowv1.Suppression. JetStream because the list must
// survive restarts of every role and of the servers, must exist in the
// embedded single-process mode as in a cluster, and must be replicated like
// the message streams; Redis only holds shaping state whose loss is tolerated.
package suppression
