package mx

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// TXT returns the TXT records of name, one string per record: the record's
// character-strings concatenated without separators, as RFC 7208 §3.3 and
// RFC 8461 §3.1 read them. name is matched case-insensitively, may end with
// a dot, and may contain underscores (_mta-sts.example.com). CNAMEs in the
// answer are followed.
//
// Answers are cached for their TTL and concurrent queries for the same name
// share one exchange, as for Lookup, so callers may call TXT on every use.
// NXDOMAIN and NODATA (no TXT records) return nil, nil. A malformed name
// returns an error wrapping ErrInvalidDomain; SERVFAIL, REFUSED, timeouts,
// network failures and an ended ctx return an error, to be treated as
// temporary. The error is a plain error, not a *deliveryerr.Error: what a
// failed TXT lookup means is the caller's decision.
func (r *Resolver) TXT(ctx context.Context, name string) ([]string, error) {
	d, err := normalizeDomain(name)
	if err != nil {
		return nil, fmt.Errorf("mx: TXT %q: %w", name, err)
	}
	res, err := r.query(ctx, dns.Fqdn(d), dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var txts []string
	for _, rr := range res.rrs {
		if rec, ok := rr.(*dns.TXT); ok {
			txts = append(txts, strings.Join(rec.Txt, ""))
		}
	}
	return txts, nil
}

// Addrs returns the IPv4 and then the IPv6 addresses of host, through the
// same cache as Lookup. It applies no egress guard and no address cap:
// callers that dial the result check each address themselves (see package
// egress) and dial the checked address.
//
// A host that does not exist or has no address records returns nil, nil.
// A malformed host returns an error wrapping ErrInvalidDomain. When the A or
// the AAAA query fails (SERVFAIL, timeout, ...), Addrs returns the addresses
// the other query produced together with the error, so that a caller may
// use a partial answer.
func (r *Resolver) Addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	h, err := normalizeDomain(host)
	if err != nil {
		return nil, fmt.Errorf("mx: addresses of %q: %w", host, err)
	}
	return r.hostAddrs(ctx, h)
}
