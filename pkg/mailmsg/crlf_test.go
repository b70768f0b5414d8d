package mailmsg

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"testing/quick"
)

func TestNormalizeCRLF(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"no breaks", "abc", "abc"},
		{"crlf kept", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"bare lf", "a\nb\n", "a\r\nb\r\n"},
		{"bare cr", "a\rb\r", "a\r\nb\r\n"},
		{"cr alone", "\r", "\r\n"},
		{"lf alone", "\n", "\r\n"},
		{"cr cr lf", "a\r\r\nb", "a\r\n\r\nb"},
		{"lf cr", "a\n\rb", "a\r\n\r\nb"},
		{"lf cr lf", "a\n\r\nb", "a\r\n\r\nb"},
		{"cr lf lf", "a\r\n\nb", "a\r\n\r\nb"},
		{"smuggling lf dot cr lf", "x\n.\r\nMAIL FROM:<a@b>\r\n", "x\r\n.\r\nMAIL FROM:<a@b>\r\n"},
		{"smuggling lf dot lf", "x\n.\nRCPT", "x\r\n.\r\nRCPT"},
		{"smuggling cr dot cr", "x\r.\rRCPT", "x\r\n.\r\nRCPT"},
		{"mixed", "a\rb\nc\r\nd\r\r\r\n\n", "a\r\nb\r\nc\r\nd\r\n\r\n\r\n\r\n"},
		{"trailing cr", "abc\r", "abc\r\n"},
		{"nul and 8bit kept", "\x00é\xff", "\x00é\xff"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := string(NormalizeCRLF([]byte(tc.in))); got != tc.want {
				t.Errorf("NormalizeCRLF(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestNormalizeCRLFDoesNotModifyInput(t *testing.T) {
	t.Parallel()
	in := []byte("a\rb\n")
	NormalizeCRLF(in)
	if string(in) != "a\rb\n" {
		t.Errorf("NormalizeCRLF modified its input: %q", in)
	}
}

// checkNormalized verifies NormalizeCRLF's contract for one input.
func checkNormalized(t *testing.T, in []byte) {
	t.Helper()
	out := NormalizeCRLF(in)
	if i := bareCRorLF(out); i >= 0 {
		t.Fatalf("NormalizeCRLF(%q) = %q: bare CR or LF at offset %d", in, out, i)
	}
	// Only line breaks change: the other octets are kept, in order.
	strip := func(b []byte) []byte {
		return bytes.Map(func(r rune) rune {
			if r == '\r' || r == '\n' {
				return -1
			}
			return r
		}, b)
	}
	if !bytes.Equal(strip(in), strip(out)) {
		t.Fatalf("NormalizeCRLF(%q) = %q: content other than line breaks changed", in, out)
	}
	if again := NormalizeCRLF(out); !bytes.Equal(again, out) {
		t.Fatalf("NormalizeCRLF is not idempotent on %q: %q then %q", in, out, again)
	}
}

// bareCRorLF returns the offset of the first CR not followed by LF or LF not
// preceded by CR, or -1.
func bareCRorLF(b []byte) int {
	for i, c := range b {
		switch {
		case c == '\r' && (i+1 == len(b) || b[i+1] != '\n'):
			return i
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			return i
		}
	}
	return -1
}

func TestNormalizeCRLFProperty(t *testing.T) {
	t.Parallel()
	// Bias the alphabet towards line-break octets so the property is
	// exercised on dense mixtures of them.
	alphabet := []byte("\r\n.a \x00\xff")
	f := func(idx []uint8) bool {
		in := make([]byte, len(idx))
		for i, x := range idx {
			in[i] = alphabet[int(x)%len(alphabet)]
		}
		checkNormalized(t, in)
		return true
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 2000}); err != nil {
		t.Error(err)
	}
}

func FuzzNormalizeCRLF(f *testing.F) {
	for _, s := range []string{"", "\r", "\n", "\r\n", "\r\r\n", "\n\r", "a\n.\r\nb", "x\r.\rRCPT TO:<a@b>\r\n", "\r\n.\n", "\xff\r\x00\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkNormalized(t, in)
	})
}

// normalizeCRLFReference is the byte-at-a-time definition NormalizeCRLF's
// faster loop must match.
func normalizeCRLFReference(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '\r':
			out = append(out, '\r', '\n')
			if i+1 < len(b) && b[i+1] == '\n' {
				i++
			}
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, b[i])
		}
	}
	return out
}

func TestNormalizeCRLFMatchesReference(t *testing.T) {
	alphabet := []byte("ab\r\n.")
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 5000 {
		in := make([]byte, rnd.IntN(40))
		for i := range in {
			in[i] = alphabet[rnd.IntN(len(alphabet))]
		}
		got, want := NormalizeCRLF(in), normalizeCRLFReference(in)
		if !bytes.Equal(got, want) {
			t.Fatalf("NormalizeCRLF(%q) = %q, want %q", in, got, want)
		}
		if IsCanonicalCRLF(in) != bytes.Equal(in, want) {
			t.Fatalf("IsCanonicalCRLF(%q) = %v, but normalising gives %q", in, IsCanonicalCRLF(in), want)
		}
	}
}
