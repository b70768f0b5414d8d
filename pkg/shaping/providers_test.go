package shaping

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestBuiltinProviders(t *testing.T) {
	c := Builtin()
	if n := len(c.Rules()); n < 11 {
		t.Fatalf("Builtin has %d destinations, want at least 11 providers", n)
	}
	// Real MX host names of each provider (as published in DNS when this
	// was written) and the destination they must fall into.
	tests := []struct {
		domain string
		mx     string
		want   string
	}{
		{"gmail.com", "gmail-smtp-in.l.google.com", "google"},
		{"gmail.com", "alt4.gmail-smtp-in.l.google.com", "google"},
		{"workspace.example", "aspmx.l.google.com", "google"},
		{"workspace.example", "smtp.google.com", "google"},
		{"workspace.example", "aspmx2.googlemail.com", "google"},
		{"outlook.com", "outlook-com.olc.protection.outlook.com", "outlook"},
		{"hotmail.com", "hotmail-com.olc.protection.outlook.com", "outlook"},
		{"contoso.example", "contoso-example.mail.protection.outlook.com", "microsoft365"},
		{"contoso.example", "contoso-example.l-v1.mx.microsoft", "microsoft365"},
		{"yahoo.com", "mta5.am0.yahoodns.net", "yahoo"},
		{"aol.com", "mx-aol.mail.gm0.yahoodns.net", "yahoo"},
		{"icloud.com", "mx01.mail.icloud.com", "icloud"},
		{"me.com", "mx02.mail.icloud.com", "icloud"},
		{"comcast.net", "mx1.comcast.net", "comcast"},
		{"gmx.net", "mx00.gmx.net", "gmx-webde"},
		{"gmx.de", "mx01.emig.gmx.net", "gmx-webde"},
		{"web.de", "mx-ha03.web.de", "gmx-webde"},
		{"orange.fr", "smtp-in.orange.fr", "orange"},
		{"wanadoo.fr", "smtp-in.orange.fr", "orange"},
		{"mail.ru", "mxs.mail.ru", "mailru"},
		{"naver.com", "mx1.naver.com", "naver"},
		{"hanmail.net", "mx1.hanmail.net", "daum"},
		{"daum.net", "mx2.hanmail.net", "daum"},
		{"qq.com", "mx3.qq.com", "qq"},
		{"foxmail.com", "mx1.qq.com", "qq"},
		{"tencent-tenant.example", "mxbiz1.qq.com", "qq"},
		{"small.example", "mail.small.example", "small.example"},
	}
	for _, tc := range tests {
		if got := c.Match(tc.domain, []string{tc.mx}).Name; got != tc.want {
			t.Errorf("Builtin().Match(%q, [%s]) = %s, want %s", tc.domain, tc.mx, got, tc.want)
		}
	}
	// Providers are matched by MX only: a smarthost route for gmail.com
	// must not count against Google.
	if got := c.Match("gmail.com", []string{"email-smtp.eu-west-1.amazonaws.com"}).Name; got != "gmail.com" {
		t.Errorf("gmail.com through a smarthost matched %s, want its own destination", got)
	}
	for _, r := range c.Rules() {
		if !r.Builtin || r.Limits.Rate.Unlimited() || r.Limits.Connections <= 0 {
			t.Errorf("builtin %s: builtin=%v limits %+v, want a rate and a connection limit", r.Name, r.Builtin, r.Limits)
		}
	}
}

// TestProvidersYAMLExplainsEveryValue holds providers.yaml to its promise:
// every destination says whom it covers, and every limit it sets carries
// its source or reasoning.
func TestProvidersYAMLExplainsEveryValue(t *testing.T) {
	var root yaml.Node
	if err := yaml.Unmarshal(providersYAML, &root); err != nil {
		t.Fatal(err)
	}
	top := root.Content[0]
	limitKeys := map[string]bool{"rate": true, "burst": true, "connections": true, "messages_per_connection": true, "recipients_per_transaction": true}
	checkLimits := func(where string, m *yaml.Node) {
		for i := 0; i+1 < len(m.Content); i += 2 {
			k := m.Content[i]
			if limitKeys[k.Value] && strings.TrimSpace(k.HeadComment+k.LineComment) == "" {
				t.Errorf("providers.yaml line %d: %s %s has no comment giving its source or reasoning", k.Line, where, k.Value)
			}
		}
	}
	var dests int
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		switch k.Value {
		case "defaults":
			checkLimits("defaults", v)
		case "destinations":
			for _, d := range v.Content {
				dests++
				name := ""
				for j := 0; j+1 < len(d.Content); j += 2 {
					if d.Content[j].Value == "name" {
						name = d.Content[j+1].Value
					}
				}
				if strings.TrimSpace(d.HeadComment+d.Content[0].HeadComment) == "" {
					t.Errorf("providers.yaml line %d: destination %s has no comment saying which domains it covers", d.Line, name)
				}
				checkLimits(name, d)
			}
		}
	}
	if dests < 11 {
		t.Fatalf("providers.yaml has %d destinations, want at least 11", dests)
	}
}
