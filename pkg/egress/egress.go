// Package egress decides whether an IP address may be dialed for outbound
// delivery. It is the SSRF guard of the delivery path: a recipient domain is
// chosen by the sender, so its MX records may point anywhere, including
// loopback, private networks and cloud metadata endpoints. Callers check the
// resolved address and then dial that address itself, never the name again,
// so that DNS rebinding cannot swap it afterwards.
//
// The blocked set covers the special-purpose ranges of the IANA IPv4 and IPv6
// Special-Purpose Address Registries (RFC 6890) that are not reachable on the
// public Internet, plus the IPv6 forms that embed an IPv4 address
// (IPv4-mapped, IPv4-compatible, NAT64 and 6to4), which are judged by the
// embedded address. IPv6 outside global unicast 2000::/3 is reserved and
// blocked too. Operator-configured destinations (static routes) are
// outside its scope: callers skip the check for them.
package egress

import "net/netip"

// block is one blocked prefix and the reason reported for it.
type block struct {
	prefix netip.Prefix
	reason string
}

// blocks4 lists blocked IPv4 ranges. More specific prefixes come first so
// that Reason names the narrowest range.
var blocks4 = []block{
	{netip.MustParsePrefix("255.255.255.255/32"), "limited broadcast (RFC 919)"},
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\" (RFC 791)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback (RFC 1122)"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private network (RFC 1918)"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private network (RFC 1918)"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private network (RFC 1918)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local, including cloud metadata (RFC 3927)"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space, CGNAT (RFC 6598)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments (RFC 6890)"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation, TEST-NET-1 (RFC 5737)"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking (RFC 2544)"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation, TEST-NET-2 (RFC 5737)"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation, TEST-NET-3 (RFC 5737)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast (RFC 5771)"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved (RFC 1112)"},
}

// blocks6 lists blocked IPv6 ranges that do not embed an IPv4 address.
var blocks6 = []block{
	{netip.MustParsePrefix("::/128"), "unspecified address (RFC 4291)"},
	{netip.MustParsePrefix("::1/128"), "loopback (RFC 4291)"},
	{netip.MustParsePrefix("100::/64"), "discard-only (RFC 6666)"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64 (RFC 8215)"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation (RFC 3849)"},
	{netip.MustParsePrefix("fc00::/7"), "unique local (RFC 4193)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local (RFC 4291)"},
	{netip.MustParsePrefix("fec0::/10"), "site-local, deprecated (RFC 3879)"},
	{netip.MustParsePrefix("ff00::/8"), "multicast (RFC 4291)"},
}

// Prefixes of IPv6 forms that carry an IPv4 address.
var (
	// compatPrefix holds IPv4-compatible addresses (::a.b.c.d), deprecated by
	// RFC 4291 §2.5.5.1; :: and ::1 are in it too but matched first.
	compatPrefix = netip.MustParsePrefix("::/96")
	// nat64Prefix is the NAT64 well-known prefix (RFC 6052): a translator
	// forwards 64:ff9b::a.b.c.d to a.b.c.d, so the IPv4 part decides.
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	// sixToFourPrefix is 6to4 (RFC 3056): 2002:AABB:CCDD::/48 is relayed to
	// the IPv4 address AA.BB.CC.DD.
	sixToFourPrefix = netip.MustParsePrefix("2002::/16")
	// globalUnicast is the only IPv6 block IANA allocates for global unicast
	// (RFC 4291 §2.4, RFC 3587); the rest of the space is reserved.
	globalUnicast = netip.MustParsePrefix("2000::/3")
)

// Allowed reports whether ip may be dialed for outbound delivery: it is a
// valid address outside every blocked range. It is equivalent to
// Reason(ip) == "".
func Allowed(ip netip.Addr) bool {
	return Reason(ip) == ""
}

// Reason returns why ip must not be dialed, naming the blocked range (for
// example "loopback (RFC 1122)"), or "" when ip is allowed. An invalid (zero)
// netip.Addr is blocked. An IPv6 zone is ignored. IPv4-mapped addresses
// (::ffff:a.b.c.d) are judged as their IPv4 address; IPv4-compatible
// (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::) addresses
// are blocked when the embedded IPv4 address is, and the reason says which
// form carried it. IPv4-compatible addresses with a public IPv4 part are
// blocked as well, because the form is deprecated and not routable, and so is
// any other IPv6 address outside 2000::/3, the only global unicast block.
func Reason(ip netip.Addr) string {
	if !ip.IsValid() {
		return "invalid address"
	}
	ip = ip.WithZone("").Unmap()
	if ip.Is4() {
		return match(blocks4, ip)
	}
	if r := match(blocks6, ip); r != "" {
		return r
	}
	b := ip.As16()
	switch {
	case compatPrefix.Contains(ip):
		if r := match(blocks4, netip.AddrFrom4([4]byte(b[12:16]))); r != "" {
			return "IPv4-compatible form of " + r
		}
		return "IPv4-compatible address, deprecated (RFC 4291)"
	case nat64Prefix.Contains(ip):
		if r := match(blocks4, netip.AddrFrom4([4]byte(b[12:16]))); r != "" {
			return "NAT64 form of " + r
		}
		return ""
	case sixToFourPrefix.Contains(ip):
		if r := match(blocks4, netip.AddrFrom4([4]byte(b[2:6]))); r != "" {
			return "6to4 form of " + r
		}
	}
	if !globalUnicast.Contains(ip) {
		return "reserved, outside global unicast 2000::/3 (RFC 4291)"
	}
	return ""
}

// match returns the reason of the first block containing ip, or "".
func match(blocks []block, ip netip.Addr) string {
	for _, b := range blocks {
		if b.prefix.Contains(ip) {
			return b.reason
		}
	}
	return ""
}
