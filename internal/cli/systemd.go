package cli

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notify speaks systemd's readiness protocol for a Type=notify unit: READY
// now, WATCHDOG while healthy returns nil, STATUS= whenever status says
// something new (looked at every statusEvery), STOPPING when ctx ends.
// Without NOTIFY_SOCKET every call is a no-op. The returned function
// waits for the watchdog goroutine; call it before exiting.
//
// healthy should take the daemon's central lock: a deadlocked daemon then
// stops petting the watchdog and systemd restarts it, which is the point.
func Notify(ctx context.Context, log *slog.Logger, status func() string, healthy func() error) (wait func()) {
	last := status()
	if ok, err := daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS="+last); err != nil {
		log.Warn("sd_notify failed", "err", err)
	} else if ok {
		log.Debug("told systemd we are ready")
	}
	done := make(chan struct{})
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog settings unreadable", "err", err)
	}
	go func() {
		defer close(done)
		var tick <-chan time.Time
		if interval > 0 {
			t := time.NewTicker(interval / 2)
			defer t.Stop()
			tick = t.C
		}
		var statusTick <-chan time.Time
		if os.Getenv("NOTIFY_SOCKET") != "" {
			t := time.NewTicker(statusEvery)
			defer t.Stop()
			statusTick = t.C
		}
		for {
			select {
			case <-ctx.Done():
				_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
				return
			case <-statusTick:
				if now := status(); now != last {
					last = now
					_, _ = daemon.SdNotify(false, "STATUS="+now)
				}
			case <-tick:
				if err := healthy(); err != nil {
					log.Error("unhealthy; not petting the systemd watchdog", "err", err)
					continue
				}
				_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
			}
		}
	}()
	return func() { <-done }
}

// statusEvery is how often the STATUS= line is looked at: `systemctl
// status` shows the live counts within this.
const statusEvery = 2 * time.Second
