package mailmsg

import (
	"strings"
	"testing"
	"time"
)

func TestTransferEncoding(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"empty", "", "7bit"},
		{"short ASCII lines", "hello\r\nworld\n", "7bit"},
		{"998-octet line", strings.Repeat("a", 998) + "\r\n", "7bit"},
		{"999-octet line", strings.Repeat("a", 999), "quoted-printable"},
		{"long text in short lines", strings.Repeat(strings.Repeat("b", 80)+"\n", 100), "7bit"},
		{"UTF-8", "Grüße", "quoted-printable"},
		{"high byte at the end of a word", "abcdefg\xc3", "quoted-printable"},
		{"long line without CR", strings.Repeat("c", 999) + "\n", "quoted-printable"},
	}
	for _, tc := range tests {
		if got := transferEncoding([]byte(tc.body)); got != tc.want {
			t.Errorf("transferEncoding(%s) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestSevenBitBodyIsSentVerbatim(t *testing.T) {
	text := "line one\r\nline two with = and =3D\r\n"
	b, err := Build(Input{From: "a@example.com", To: []string{"b@example.com"}, Subject: "s", Text: text}, Limits{}, time.Unix(0, 0), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b.Body), "Content-Transfer-Encoding: 7bit") || !strings.HasSuffix(string(b.Body), "\r\n\r\n"+text) {
		t.Errorf("Build(%q) body = %q, want a 7bit part holding the text verbatim", text, b.Body)
	}
}
