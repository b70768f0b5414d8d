package retry

import (
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	s := Schedule{Min: time.Minute, Max: 10 * time.Minute, Factor: 2, Jitter: 0.2}
	tests := []struct {
		name    string
		attempt int
		r       float64
		want    time.Duration
	}{
		{"first, no jitter draw", 1, 0.5, time.Minute},
		{"second doubles", 2, 0.5, 2 * time.Minute},
		{"fourth", 4, 0.5, 8 * time.Minute},
		{"capped", 9, 0.5, 10 * time.Minute},
		{"capped even with jitter up", 9, 0.999999, 10 * time.Minute},
		{"jitter down", 2, 0, 96 * time.Second},
		{"jitter up", 2, 1, 144 * time.Second},
		{"attempt zero treated as first", 0, 0.5, time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.delay(tc.attempt, tc.r); got != tc.want {
				t.Errorf("delay(%d, %v) = %v, want %v", tc.attempt, tc.r, got, tc.want)
			}
		})
	}
}

func TestDelayStaysInBounds(t *testing.T) {
	s := DefaultSchedule()
	for attempt := 1; attempt < 200; attempt++ {
		d := s.Delay(attempt)
		if d < s.Min/2 || d > s.Max {
			t.Fatalf("Delay(%d) = %v, want within [%v, %v]", attempt, d, s.Min/2, s.Max)
		}
	}
}

func TestDefaultScheduleFollowsPostfix(t *testing.T) {
	s := DefaultSchedule()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.Min < 5*time.Minute {
		t.Errorf("default min %v below Postfix's minimal_backoff_time 300s", s.Min)
	}
	if s.delay(1, 0) < 4*time.Minute {
		t.Errorf("first retry with maximal negative jitter %v is below 4m", s.delay(1, 0))
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		s    Schedule
		ok   bool
	}{
		{"default", DefaultSchedule(), true},
		{"zero", Schedule{}, false},
		{"max below min", Schedule{Min: time.Hour, Max: time.Minute, Factor: 2}, false},
		{"factor below one", Schedule{Min: time.Second, Max: time.Minute, Factor: 0.5}, false},
		{"jitter one", Schedule{Min: time.Second, Max: time.Minute, Factor: 2, Jitter: 1}, false},
	}
	for _, tc := range tests {
		if err := tc.s.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.s, err, tc.ok)
		}
	}
}
