package testenv

import "time"

// Eventually calls cond every 10 ms until it reports true or timeout has
// passed, and reports whether it did (nats-server's checkFor, in short).
// Tests wait for conditions with it, never with a bare sleep.
func Eventually(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); ; {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond) //nolint:forbidigo // poll interval under a deadline
	}
}
