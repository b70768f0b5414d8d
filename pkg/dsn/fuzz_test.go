package dsn

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics and that what it returns keeps
// the package's invariants, whatever the input.
func FuzzParse(f *testing.F) {
	samples, err := filepath.Glob("testdata/*.eml")
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range samples {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("From: MAILER-DAEMON@x\n\nHi. This is the qmail-send program at x.\n<a@b>:\n"))
	f.Add([]byte("Content-Type: multipart/report; boundary=b\n\n--b\nContent-Type: message/delivery-status\n\nAction: failed\n--b--\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(bytes.NewReader(data))
		if err != nil {
			if r != nil {
				t.Fatalf("Parse returned a report with error %v", err)
			}
			return
		}
		if r == nil {
			t.Fatal("Parse returned neither a report nor an error")
		}
		if r.Kind < KindUnknown || r.Kind > KindComplaint {
			t.Fatalf("Kind = %d, out of range", int(r.Kind))
		}
		if len(r.Recipients) > maxRecipients {
			t.Fatalf("%d recipients, want at most %d", len(r.Recipients), maxRecipients)
		}
		if r.Kind != KindComplaint && r.Kind != kindOf(r.Recipients) {
			t.Fatalf("Kind = %v, but the recipients' actions say %v", r.Kind, kindOf(r.Recipients))
		}
		for _, rc := range r.Recipients {
			if rc.Status != "" && validStatus(rc.Status) != rc.Status {
				t.Fatalf("recipient status %q is not an RFC 3463 code", rc.Status)
			}
			if rc.SMTPCode != 0 && (rc.SMTPCode < 200 || rc.SMTPCode > 599) {
				t.Fatalf("recipient SMTP code %d out of range", rc.SMTPCode)
			}
		}
		seen := map[string]bool{}
		for _, a := range r.Addresses {
			if a == "" || seen[a] {
				t.Fatalf("Addresses %q has an empty or repeated entry", r.Addresses)
			}
			seen[a] = true
		}
	})
}
