package retry

import (
	"testing"
	"time"
)

func TestHint(t *testing.T) {
	tests := []struct {
		text string
		want time.Duration
		ok   bool
	}{
		{"Greylisted, see http://postgrey.schweikert.ch/help/example.com.html, please try again in 300 seconds", 300 * time.Second, true},
		{"4.7.1 Try again in 5 minutes", 5 * time.Minute, true},
		{"temporarily deferred, retry in 30s", 30 * time.Second, true},
		{"Please try again after 2 min", 2 * time.Minute, true},
		{"Try again in 1 hour", time.Hour, true},
		{"4.7.28 Our system has detected an unusual rate of unsolicited mail. Try again later.", 0, false},
		{"mailbox full", 0, false},
		{"try again in 0 seconds", 0, false},
	}
	for _, tc := range tests {
		got, ok := Hint(tc.text)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Hint(%q) = %v, %v; want %v, %v", tc.text, got, ok, tc.want, tc.ok)
		}
	}
}

func TestAfterHonoursHintWithinBounds(t *testing.T) {
	s := Schedule{Min: 5 * time.Minute, Max: time.Hour, Factor: 2}
	tests := []struct {
		text string
		want time.Duration
	}{
		{"please try again in 90 seconds", 90 * time.Second},
		{"try again in 3 hours", time.Hour},
		{"no hint here", 5 * time.Minute},
	}
	for _, tc := range tests {
		if got := s.After(1, tc.text); got != tc.want {
			t.Errorf("After(1, %q) = %v, want %v", tc.text, got, tc.want)
		}
	}
}
