package bounceclass

import (
	_ "embed"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// rulesData is the classification table; its header documents the format.
//
//go:embed rules.txt
var rulesData string

// compiled is rulesData parsed once at init. A malformed file is a
// programming error caught by the package's tests, so init panics with the
// line number rather than classifying with a partial table.
var compiled = mustParseRules(rulesData)

func mustParseRules(data string) []rule {
	rs, err := parseRules(data)
	if err != nil {
		panic("bounceclass: rules.txt: " + err.Error())
	}
	return rs
}

// rule is one compiled line of rules.txt.
type rule struct {
	id       string
	code     string     // prefix of the decimal basic code; "" matches any
	enhanced *codeRange // nil matches any, including no enhanced code
	substr   string     // lower-case substring; "" with re == nil matches any
	re       *regexp.Regexp
	category Category
	outcome  *Outcome // nil: derive from the reply class
}

// codeRange matches an enhanced code part by part; each part is a closed
// interval, [-1,-1] for "*".
type codeRange [3][2]int

func (c *codeRange) match(parts [3]int) bool {
	for i, p := range c {
		if p[0] < 0 {
			continue
		}
		if parts[i] < p[0] || parts[i] > p[1] {
			return false
		}
	}
	return true
}

// input is a reply normalised once for matching against every rule.
type input struct {
	code     string // decimal basic code, "" when 0
	hasEnh   bool
	enhanced [3]int
	class    int    // effective reply class, see the package doc
	text     string // lower-case, continuation codes removed, spaces collapsed
}

var (
	// qmailEnhanced finds the enhanced code qmail appends to its text.
	qmailEnhanced = regexp.MustCompile(`\(#([245]\.\d{1,3}\.\d{1,3})\)`)
	// continuation removes the "550-5.7.1 " prefixes left in multi-line
	// replies that were joined without stripping them (as in DSNs).
	continuation = regexp.MustCompile(`(^|\s)[245]\d\d(?:[- ][245]\.\d{1,3}\.\d{1,3}(?:\s|$)|-)`)
)

func newInput(code int, enhanced, text string) input {
	var in input
	if code > 0 {
		in.code = strconv.Itoa(code)
	}
	enhanced = strings.TrimSpace(enhanced)
	if enhanced == "" {
		if m := qmailEnhanced.FindStringSubmatch(text); m != nil {
			enhanced = m[1]
		}
	}
	if parts, ok := parseEnhanced(enhanced); ok {
		in.hasEnh, in.enhanced = true, parts
	}
	switch {
	case in.hasEnh && (in.enhanced[0] == 2 || in.enhanced[0] == 4 || in.enhanced[0] == 5):
		in.class = in.enhanced[0]
	case code >= 200 && code < 600:
		in.class = code / 100
	}
	t := continuation.ReplaceAllString(text, " ")
	in.text = strings.ToLower(strings.Join(strings.Fields(t), " "))
	return in
}

// parseEnhanced parses "class.subject.detail".
func parseEnhanced(s string) ([3]int, bool) {
	var out [3]int
	fs := strings.Split(s, ".")
	if len(fs) != 3 {
		return out, false
	}
	for i, f := range fs {
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 || len(f) > 3 {
			return out, false
		}
		out[i] = n
	}
	return out, true
}

func (r *rule) match(in *input) bool {
	if r.code != "" && !strings.HasPrefix(in.code, r.code) {
		return false
	}
	if r.enhanced != nil && (!in.hasEnh || !r.enhanced.match(in.enhanced)) {
		return false
	}
	switch {
	case r.re != nil:
		return r.re.MatchString(in.text)
	case r.substr != "":
		return strings.Contains(in.text, r.substr)
	}
	return true
}

// parseRules compiles rules.txt. Errors name the 1-based line.
func parseRules(data string) ([]rule, error) {
	var rules []rule
	seen := map[string]int{}
	for i, line := range strings.Split(data, "\n") {
		n := i + 1
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r, err := parseRule(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if prev, ok := seen[r.id]; ok {
			return nil, fmt.Errorf("line %d: rule id %q already used on line %d", n, r.id, prev)
		}
		seen[r.id] = n
		rules = append(rules, r)
	}
	if len(rules) == 0 {
		return nil, fmt.Errorf("no rules")
	}
	return rules, nil
}

var (
	idPattern   = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*$`)
	codePattern = regexp.MustCompile(`^[2-5][0-9]{0,2}$`)
)

func parseRule(line string) (rule, error) {
	fs := strings.Split(line, " | ")
	if len(fs) != 5 && len(fs) != 6 {
		return rule{}, fmt.Errorf("want 5 or 6 fields separated by \" | \", got %d", len(fs))
	}
	for i := range fs {
		fs[i] = strings.TrimSpace(fs[i])
	}
	var r rule
	if r.id = fs[0]; !idPattern.MatchString(r.id) {
		return rule{}, fmt.Errorf("bad rule id %q", r.id)
	}
	if fs[1] != "*" {
		if !codePattern.MatchString(fs[1]) {
			return rule{}, fmt.Errorf("rule %s: bad code %q: want * or a 1-3 digit prefix of a 2xx-5xx code", r.id, fs[1])
		}
		r.code = fs[1]
	}
	if fs[2] != "*" {
		cr, err := parseCodeRange(fs[2])
		if err != nil {
			return rule{}, fmt.Errorf("rule %s: %w", r.id, err)
		}
		r.enhanced = &cr
	}
	switch text := fs[3]; {
	case text == "*":
	case strings.HasPrefix(text, "re:"):
		re, err := regexp.Compile("(?i)" + strings.TrimPrefix(text, "re:"))
		if err != nil {
			return rule{}, fmt.Errorf("rule %s: %w", r.id, err)
		}
		r.re = re
	case text == "":
		return rule{}, fmt.Errorf("rule %s: empty text: use * to match any", r.id)
	default:
		r.substr = strings.ToLower(text)
	}
	r.category = Category(fs[4])
	if !validCategory(r.category) {
		return rule{}, fmt.Errorf("rule %s: unknown category %q", r.id, fs[4])
	}
	if len(fs) == 6 {
		var o Outcome
		switch fs[5] {
		case "deferred":
			o = Deferred
		case "bounced":
			o = Bounced
		case "delivered":
			o = Delivered
		default:
			return rule{}, fmt.Errorf("rule %s: bad outcome %q: want deferred, bounced or delivered", r.id, fs[5])
		}
		r.outcome = &o
	}
	if r.code == "" && r.enhanced == nil && r.substr == "" && r.re == nil {
		return rule{}, fmt.Errorf("rule %s: matches every reply", r.id)
	}
	return r, nil
}

// parseCodeRange parses "5.7.1", "*.2.2", "5.7.*" or "5.7.606-649".
func parseCodeRange(s string) (codeRange, error) {
	var cr codeRange
	fs := strings.Split(s, ".")
	if len(fs) != 3 {
		return cr, fmt.Errorf("bad enhanced code %q: want class.subject.detail", s)
	}
	for i, f := range fs {
		if f == "*" {
			cr[i] = [2]int{-1, -1}
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a || b > 999 {
			return cr, fmt.Errorf("bad enhanced code %q: part %q", s, f)
		}
		if i == 0 && (a != b || (a != 2 && a != 4 && a != 5)) {
			return cr, fmt.Errorf("bad enhanced code %q: class must be 2, 4 or 5", s)
		}
		cr[i] = [2]int{a, b}
	}
	return cr, nil
}

func validCategory(c Category) bool {
	for _, k := range Categories {
		if k == c {
			return true
		}
	}
	return false
}
