package admin

import "time"

// SetHeaderTimeout shortens the header wait for a test; it returns the
// old value.
func SetHeaderTimeout(d time.Duration) time.Duration {
	old := headerTimeout
	headerTimeout = d
	return old
}
