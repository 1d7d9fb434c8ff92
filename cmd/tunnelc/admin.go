package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/cli"
	"github.com/tunnel-dev/tunnel/internal/client"
)

func newStatus() *cobra.Command {
	var asJSON bool
	cmd := cli.AdminCommand("tunnelc", &cobra.Command{
		Use:   "status",
		Short: "show the running tunnelc's session and tunnels",
		Args:  cobra.NoArgs,
	}, func(cmd *cobra.Command, c *admin.Client, _ []string) error {
		var r client.Report
		if err := c.Get(cmd.Context(), "/v1/status", &r); err != nil {
			return err
		}
		if asJSON {
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(r)
		}
		printReport(cmd.OutOrStdout(), &r, time.Now())
		return nil
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON, for scripts")
	return cmd
}

func printReport(out io.Writer, r *client.Report, now time.Time) {
	fmt.Fprintf(out, "tunnelc %s as %q, up %s\n", r.Version, r.Client, cli.Age(now, r.Started))
	conns := uint64(0)
	for _, t := range r.Tunnels {
		conns += t.Connections
	}
	if r.Connected {
		fmt.Fprintf(out, "connected to %s, session %s for %s, rtt %.1fms; %d tunnels, %d connections\n",
			r.Server, r.Session, cli.Age(now, *r.Since), r.RTTMillis, len(r.Tunnels), conns)
	} else {
		fmt.Fprintf(out, "NOT connected to %s: %s\n", r.Server, r.LastError)
	}
	fmt.Fprintf(out, "%d sessions since start, %d of them resumed\n", r.Sessions, r.Resumes)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "\nTUNNEL\tPUBLIC\tLOCAL\tSTATE\tCONNS\tTOTAL\tIN\tOUT\tDIAL FAILED")
	for _, t := range r.Tunnels {
		state := t.State
		if t.Pending != "" {
			state += ": " + t.Pending
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", t.Name, dash(t.Public), t.Local, state, t.Connections, t.ConnectionsTotal,
			cli.Bytes(t.BytesIn), cli.Bytes(t.BytesOut), failures(t.DialFailed))
	}
	w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// failures is "refused 3, timeout 1", or 0.
func failures(m map[string]uint64) string {
	if len(m) == 0 {
		return "0"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
