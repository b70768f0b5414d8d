package retry

import (
	"regexp"
	"strconv"
	"strings"
	"time"
)

// hintPattern matches the retry hints receivers put in 4xx replies:
// Postgrey's "please try again in 300 seconds", "retry in 5 minutes",
// "try again after 2 min", "Try again in 1 hour".
var hintPattern = regexp.MustCompile(`(?i)\b(?:try(?:\s+again)?|retry)\s+(?:in|after)\s+(\d{1,6})\s*(s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?)\b`)

// Hint extracts a retry delay a server suggested in its reply text. It
// reports false when the text names none.
func Hint(text string) (time.Duration, bool) {
	m := hintPattern.FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n <= 0 {
		return 0, false
	}
	unit := time.Second
	switch strings.ToLower(m[2])[0] {
	case 'm':
		unit = time.Minute
	case 'h':
		unit = time.Hour
	}
	return time.Duration(n) * unit, true
}

// After returns the delay after a failed attempt, honouring the server's
// hint when it gave one: the hint is used as given (greylisting servers
// accept the retry as soon as their window has passed), but never below
// one second nor above Max.
func (s Schedule) After(attempt int, replyText string) time.Duration {
	if h, ok := Hint(replyText); ok {
		return min(max(h, time.Second), s.Max)
	}
	return s.Delay(attempt)
}
