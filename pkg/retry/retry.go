// Package retry computes when a temporarily failed delivery is tried again:
// exponential backoff between a floor and a cap, perturbed by jitter so that
// a burst of deferrals (a restart, a receiver outage) does not come back as
// one burst. RFC 5321 §4.5.4.1 asks for at least 30 minutes between retries
// to one destination; Postfix starts at 5 minutes (minimal_backoff_time) and
// caps at 4000 s (maximal_backoff_time). Those are the defaults.
package retry

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Schedule is a jittered exponential backoff.
type Schedule struct {
	// Min is the delay after the first failed attempt.
	Min time.Duration
	// Max caps every delay.
	Max time.Duration
	// Factor multiplies the delay after each further attempt.
	Factor float64
	// Jitter is the fraction (0..1) by which a delay is randomly shortened
	// or lengthened; the result never drops below Min/2 nor exceeds Max.
	Jitter float64
}

// DefaultSchedule mirrors Postfix's defaults.
func DefaultSchedule() Schedule {
	return Schedule{Min: 5 * time.Minute, Max: 4000 * time.Second, Factor: 2, Jitter: 0.2}
}

// Validate reports an unusable schedule.
func (s Schedule) Validate() error {
	var errs []error
	if s.Min <= 0 || s.Max < s.Min {
		errs = append(errs, fmt.Errorf("retry: need 0 < min (%v) <= max (%v)", s.Min, s.Max))
	}
	if s.Factor < 1 {
		errs = append(errs, fmt.Errorf("retry: factor %v below 1", s.Factor))
	}
	if s.Jitter < 0 || s.Jitter >= 1 {
		errs = append(errs, fmt.Errorf("retry: jitter %v outside [0,1)", s.Jitter))
	}
	return errors.Join(errs...)
}

// Delay returns the wait after the given failed attempt (1 for the first).
func (s Schedule) Delay(attempt int) time.Duration {
	return s.delay(attempt, rand.Float64())
}

// delay is Delay with the random draw r in [0,1) made explicit for tests.
func (s Schedule) delay(attempt int, r float64) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := float64(s.Min)
	for i := 1; i < attempt && d < float64(s.Max); i++ {
		d *= s.Factor
	}
	d = min(d, float64(s.Max))
	d *= 1 + s.Jitter*(2*r-1)
	d = max(d, float64(s.Min)/2)
	return min(time.Duration(d), s.Max)
}
