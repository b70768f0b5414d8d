package bounceclass

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/replies.golden from the current rules")

const (
	repliesFile = "testdata/replies.txt"
	goldenFile  = "testdata/replies.golden"
)

// reply is one line of testdata/replies.txt.
type reply struct {
	line     int
	code     int
	enhanced string
	text     string
	provider string
}

func readReplies(t *testing.T) []reply {
	t.Helper()
	data, err := os.ReadFile(repliesFile)
	if err != nil {
		t.Fatal(err)
	}
	var out []reply
	for i, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Split(line, "|")
		for j := range fs {
			fs[j] = strings.TrimSpace(fs[j])
		}
		if len(fs) != 4 || !strings.HasPrefix(fs[3], "# ") {
			t.Fatalf("%s:%d: want \"code | enhanced | text | # provider\", got %q", repliesFile, i+1, line)
		}
		code, err := strconv.Atoi(fs[0])
		if err != nil {
			t.Fatalf("%s:%d: bad code: %v", repliesFile, i+1, err)
		}
		out = append(out, reply{
			line:     i + 1,
			code:     code,
			enhanced: fs[1],
			text:     fs[2],
			provider: strings.TrimPrefix(fs[3], "# "),
		})
	}
	return out
}

// goldenLine renders one classification; the provider is kept so that a
// reviewer reads the golden file on its own.
func goldenLine(r reply, res Result) string {
	return fmt.Sprintf("%d: %s %s %s # %s", r.line, res.Outcome, res.Category, res.Rule, r.provider)
}

func TestGoldenReplies(t *testing.T) {
	replies := readReplies(t)
	if len(replies) < 150 {
		t.Errorf("%s has %d replies, want at least 150", repliesFile, len(replies))
	}
	got := make([]string, len(replies))
	for i, r := range replies {
		got[i] = goldenLine(r, Classify(r.code, r.enhanced, r.text))
	}
	if *update {
		if err := os.WriteFile(goldenFile, []byte(strings.Join(got, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	data, err := os.ReadFile(goldenFile)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	want := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(want) != len(got) {
		t.Errorf("%s has %d lines, %s has %d replies; run go test -update and review the diff", goldenFile, len(want), repliesFile, len(got))
	}
	for i := range min(len(want), len(got)) {
		if got[i] != want[i] {
			r := replies[i]
			t.Errorf("%s:%d: Classify(%d, %q, %q)\n  got  %s\n  want %s",
				repliesFile, r.line, r.code, r.enhanced, r.text, got[i], want[i])
		}
	}
}
