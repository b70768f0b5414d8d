package egress

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAllowed(t *testing.T) {
	tests := []struct {
		ip      string
		allowed bool
		reason  string // substring of Reason when blocked
	}{
		// Public addresses.
		{"8.8.8.8", true, ""},
		{"1.1.1.1", true, ""},
		{"93.184.216.34", true, ""},
		{"172.15.255.255", true, ""},
		{"172.32.0.0", true, ""},
		{"100.63.255.255", true, ""},
		{"100.128.0.0", true, ""},
		{"192.0.1.255", true, ""},
		{"192.0.3.0", true, ""},
		{"198.17.255.255", true, ""},
		{"198.20.0.0", true, ""},
		{"223.255.255.255", true, ""},
		{"169.253.255.255", true, ""},
		{"11.0.0.0", true, ""},
		{"2001:4860:4860::8888", true, ""},
		{"2a00:1450:4001:80b::200e", true, ""},
		{"2001:db9::1", true, ""},
		{"::ffff:8.8.8.8", true, ""},
		{"64:ff9b::808:808", true, ""}, // NAT64 of 8.8.8.8
		{"2002:808:808::1", true, ""},  // 6to4 of 8.8.8.8
		{"2606:4700:4700::1111", true, ""},

		// IPv4 blocked ranges, at both edges.
		{"0.0.0.0", false, "this network"},
		{"0.255.255.255", false, "this network"},
		{"127.0.0.1", false, "loopback"},
		{"127.255.255.254", false, "loopback"},
		{"10.0.0.1", false, "RFC 1918"},
		{"10.255.255.255", false, "RFC 1918"},
		{"172.16.0.1", false, "RFC 1918"},
		{"172.31.255.255", false, "RFC 1918"},
		{"192.168.0.1", false, "RFC 1918"},
		{"192.168.255.255", false, "RFC 1918"},
		{"169.254.169.254", false, "cloud metadata"},
		{"169.254.0.0", false, "link-local"},
		{"100.64.0.1", false, "CGNAT"},
		{"100.127.255.255", false, "CGNAT"},
		{"192.0.0.8", false, "IETF protocol"},
		{"192.0.0.255", false, "IETF protocol"},
		{"192.0.2.1", false, "TEST-NET-1"},
		{"198.18.0.1", false, "benchmarking"},
		{"198.19.255.255", false, "benchmarking"},
		{"198.51.100.7", false, "TEST-NET-2"},
		{"203.0.113.9", false, "TEST-NET-3"},
		{"224.0.0.1", false, "multicast"},
		{"239.255.255.250", false, "multicast"},
		{"240.0.0.1", false, "reserved"},
		{"254.255.255.255", false, "reserved"},
		{"255.255.255.255", false, "broadcast"},

		// IPv6 blocked ranges.
		{"::", false, "unspecified"},
		{"::1", false, "loopback"},
		{"fc00::1", false, "unique local"},
		{"fd12:3456:789a::1", false, "unique local"},
		{"fe80::1", false, "link-local"},
		{"fe80::1%eth0", false, "link-local"},
		{"febf:ffff::1", false, "link-local"},
		{"fec0::1", false, "site-local"},
		{"ff02::1", false, "multicast"},
		{"ff05::1:3", false, "multicast"},
		{"2001:db8::1", false, "documentation"},
		{"2001:db8:ffff:ffff::1", false, "documentation"},
		{"100::1", false, "discard"},
		{"64:ff9b:1::a00:1", false, "local-use NAT64"},
		{"fe00::1", false, "outside global unicast"},
		{"4000::1", false, "outside global unicast"},
		{"1::1", false, "outside global unicast"},

		// IPv4-mapped forms are judged as IPv4.
		{"::ffff:127.0.0.1", false, "loopback"},
		{"::ffff:10.1.2.3", false, "RFC 1918"},
		{"::ffff:169.254.169.254", false, "cloud metadata"},
		{"::ffff:0.0.0.0", false, "this network"},
		{"::ffff:255.255.255.255", false, "broadcast"},
		{"::ffff:192.168.1.1", false, "RFC 1918"},
		{"::ffff:7f00:1", false, "loopback"},

		// IPv4-compatible forms.
		{"::127.0.0.1", false, "IPv4-compatible form of loopback"},
		{"::10.0.0.1", false, "IPv4-compatible form of private"},
		{"::169.254.169.254", false, "IPv4-compatible form of link-local"},
		{"::8.8.8.8", false, "IPv4-compatible address, deprecated"},

		// NAT64 and 6to4 forms of blocked IPv4.
		{"64:ff9b::127.0.0.1", false, "NAT64 form of loopback"},
		{"64:ff9b::a9fe:a9fe", false, "NAT64 form of link-local"},
		{"64:ff9b::192.168.0.1", false, "NAT64 form of private"},
		{"2002:7f00:1::", false, "6to4 form of loopback"},
		{"2002:a00:1::1", false, "6to4 form of private"},
	}
	for _, tc := range tests {
		t.Run(tc.ip, func(t *testing.T) {
			t.Parallel()
			ip := netip.MustParseAddr(tc.ip)
			if got := Allowed(ip); got != tc.allowed {
				t.Errorf("Allowed(%s) = %v, want %v (Reason %q)", tc.ip, got, tc.allowed, Reason(ip))
			}
			got := Reason(ip)
			if tc.allowed && got != "" {
				t.Errorf("Reason(%s) = %q, want \"\"", tc.ip, got)
			}
			if !tc.allowed && !strings.Contains(got, tc.reason) {
				t.Errorf("Reason(%s) = %q, want it to contain %q", tc.ip, got, tc.reason)
			}
		})
	}
}

func TestReasonInvalid(t *testing.T) {
	var zero netip.Addr
	if Allowed(zero) {
		t.Errorf("Allowed(zero Addr) = true, want false")
	}
	if got, want := Reason(zero), "invalid address"; got != want {
		t.Errorf("Reason(zero Addr) = %q, want %q", got, want)
	}
}

// TestEveryV4BlockHasMappedForms checks that each IPv4 range is also blocked
// in every IPv6 form that embeds it, so a new range cannot be added to one
// form only.
func TestEveryV4BlockHasMappedForms(t *testing.T) {
	for _, b := range blocks4 {
		v4 := b.prefix.Addr().As4()
		forms := map[string]netip.Addr{
			"IPv4":            b.prefix.Addr(),
			"IPv4-mapped":     netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: v4[0], 13: v4[1], 14: v4[2], 15: v4[3]}),
			"IPv4-compatible": netip.AddrFrom16([16]byte{12: v4[0], 13: v4[1], 14: v4[2], 15: v4[3]}),
			"NAT64":           netip.AddrFrom16([16]byte{1: 0x64, 2: 0xff, 3: 0x9b, 12: v4[0], 13: v4[1], 14: v4[2], 15: v4[3]}),
			"6to4":            netip.AddrFrom16([16]byte{0: 0x20, 1: 0x02, 2: v4[0], 3: v4[1], 4: v4[2], 5: v4[3], 15: 1}),
		}
		for form, ip := range forms {
			if Allowed(ip) {
				t.Errorf("Allowed(%s) = true for the %s form of %s, want false", ip, form, b.prefix)
			}
		}
	}
}
