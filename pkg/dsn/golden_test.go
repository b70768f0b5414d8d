package dsn

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json from the current parser")

// minSamples is the number of sample messages testdata must hold, so that
// a lost file does not silently shrink the suite.
const minSamples = 24

// golden is the reviewed form of a Report. OriginalHeaders has no useful
// JSON form, so the golden records its size and the returned subject, which
// is enough to see that the right header was read.
type golden struct {
	Kind                 string
	ReportingMTA         string      `json:",omitempty"`
	OriginalEnvelopeID   string      `json:",omitempty"`
	Recipients           []Recipient `json:",omitempty"`
	FeedbackType         string      `json:",omitempty"`
	UserAgent            string      `json:",omitempty"`
	OriginalMailFrom     string      `json:",omitempty"`
	OriginalRcptTo       []string    `json:",omitempty"`
	SourceIP             string      `json:",omitempty"`
	OriginalMessageID    string      `json:",omitempty"`
	OriginalReturnPath   string      `json:",omitempty"`
	OriginalHeaderFields int         `json:",omitempty"`
	OriginalSubject      string      `json:",omitempty"`
	Addresses            []string    `json:",omitempty"`
	Error                string      `json:",omitempty"`
}

func toGolden(r *Report, err error) golden {
	if err != nil {
		return golden{Kind: "error", Error: err.Error()}
	}
	return golden{
		Kind:                 r.Kind.String(),
		ReportingMTA:         r.ReportingMTA,
		OriginalEnvelopeID:   r.OriginalEnvelopeID,
		Recipients:           r.Recipients,
		FeedbackType:         r.FeedbackType,
		UserAgent:            r.UserAgent,
		OriginalMailFrom:     r.OriginalMailFrom,
		OriginalRcptTo:       r.OriginalRcptTo,
		SourceIP:             r.SourceIP,
		OriginalMessageID:    r.OriginalMessageID,
		OriginalReturnPath:   r.OriginalReturnPath,
		OriginalHeaderFields: r.OriginalHeaders.Len(),
		OriginalSubject:      r.OriginalHeaders.Get("Subject"),
		Addresses:            r.Addresses,
	}
}

func marshalGolden(g golden) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // keep "<user@example.org>" readable
	enc.SetIndent("", "  ")
	err := enc.Encode(g)
	return b.Bytes(), err
}

func TestGolden(t *testing.T) {
	samples, err := filepath.Glob("testdata/*.eml")
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) < minSamples {
		t.Errorf("testdata has %d samples, want at least %d", len(samples), minSamples)
	}
	for _, sample := range samples {
		name := strings.TrimSuffix(filepath.Base(sample), ".eml")
		t.Run(name, func(t *testing.T) {
			msg, err := os.ReadFile(sample)
			if err != nil {
				t.Fatal(err)
			}
			got, err := marshalGolden(toGolden(Parse(bytes.NewReader(msg))))
			if err != nil {
				t.Fatal(err)
			}
			goldenFile := strings.TrimSuffix(sample, ".eml") + ".golden.json"
			if *update {
				if err := os.WriteFile(goldenFile, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(goldenFile)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it, then review it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Parse(%s) differs from %s (- want, + got; run go test -update and review the diff):\n%s",
					sample, goldenFile, lineDiff(string(want), string(got)))
			}
		})
	}
}

// lineDiff returns a minimal line diff of a and b, "-" for lines only in a
// and "+" for lines only in b, from their longest common subsequence.
func lineDiff(a, b string) string {
	x, y := strings.Split(a, "\n"), strings.Split(b, "\n")
	// lcs[i][j] is the LCS length of x[i:] and y[j:].
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out strings.Builder
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			fmt.Fprintf(&out, "  %s\n", x[i])
			i++
			j++
		case j < len(y) && (i == len(x) || lcs[i][j+1] >= lcs[i+1][j]):
			fmt.Fprintf(&out, "+ %s\n", y[j])
			j++
		default:
			fmt.Fprintf(&out, "- %s\n", x[i])
			i++
		}
	}
	return out.String()
}
