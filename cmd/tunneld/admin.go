package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/cli"
	"github.com/tunnel-dev/tunnel/internal/server"
)

func newStatus() *cobra.Command {
	var asJSON, conns bool
	cmd := cli.AdminCommand("tunneld", &cobra.Command{
		Use:   "status",
		Short: "show the running tunneld's sessions, tunnels and connections",
		Args:  cobra.NoArgs,
	}, func(cmd *cobra.Command, c *admin.Client, _ []string) error {
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		if conns {
			var cs []server.ConnStatus
			if err := c.Get(cmd.Context(), "/v1/connections", &cs); err != nil {
				return err
			}
			if asJSON {
				return enc.Encode(cs)
			}
			printConns(cmd.OutOrStdout(), cs, time.Now())
			return nil
		}
		var st server.Status
		if err := c.Get(cmd.Context(), "/v1/status", &st); err != nil {
			return err
		}
		if asJSON {
			return enc.Encode(st)
		}
		printStatus(cmd.OutOrStdout(), &st, time.Now())
		return nil
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON, for scripts")
	cmd.Flags().BoolVar(&conns, "connections", false, "list the open public connections instead (their ids are what close-conn takes)")
	return cmd
}

func printConns(out io.Writer, cs []server.ConnStatus, now time.Time) {
	fmt.Fprintf(out, "%d connections\n", len(cs))
	if len(cs) == 0 {
		return
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "\nID\tCLIENT\tTUNNEL\tPEER\tOPEN\tIN\tOUT")
	for _, c := range cs {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.Client, c.Tunnel, c.Peer, cli.Age(now, c.Since), cli.Bytes(c.BytesIn), cli.Bytes(c.BytesOut))
	}
	w.Flush()
}

func printStatus(out io.Writer, st *server.Status, now time.Time) {
	tunnels, conns := 0, uint64(0)
	for _, s := range st.Sessions {
		tunnels += len(s.Tunnels)
		conns += s.Connections
	}
	fmt.Fprintf(out, "tunneld %s, up %s, sessions on %s\n", st.Version, cli.Age(now, st.Started), st.Listen)
	fmt.Fprintf(out, "%d sessions, %d tunnels, %d connections\n", len(st.Sessions), tunnels, conns)
	for _, b := range st.Bans {
		fmt.Fprintf(out, "banned: %s until %s (%s)\n", b.Client, b.Until.Format(time.RFC3339), b.Reason)
	}
	if len(st.Sessions) == 0 {
		return
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "\nCLIENT\tSESSION\tREMOTE\tSTATE\tUP\tRTT\tCONNS\tIN\tOUT")
	for _, s := range st.Sessions {
		state := s.State
		if s.Resume != nil && s.Resume.AwaySince != nil {
			state = fmt.Sprintf("away %s (window %s, %d held)", cli.Age(now, *s.Resume.AwaySince), s.Resume.Window, s.Resume.Held)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%.1fms\t%d\t%s\t%s\n", s.Client, s.ID, s.Remote, state, cli.Age(now, s.Since),
			s.RTTMillis, s.Connections, cli.Bytes(s.BytesIn), cli.Bytes(s.BytesOut))
	}
	fmt.Fprintln(w, "\nCLIENT\tTUNNEL\tPUBLIC\tSTATE\tCONNS\tTOTAL\tREQUESTS\tIN\tOUT\tREFUSED\tDIAL FAILED")
	for _, s := range st.Sessions {
		for _, t := range s.Tunnels {
			state := t.State
			if t.Pending != "" {
				state += ": " + t.Pending
			}
			requests := "-" // a tunnel whose requests tunneld does not read
			if t.Requests != nil {
				requests = fmt.Sprint(*t.Requests)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%d\t%d\n", s.Client, t.Name, t.Public, state, t.Connections, t.ConnectionsTotal,
				requests, cli.Bytes(t.BytesIn), cli.Bytes(t.BytesOut), t.Refused, t.DialFailed)
		}
	}
	w.Flush()
}

func newKick() *cobra.Command {
	var reason string
	var ban time.Duration
	cmd := cli.AdminCommand("tunneld", &cobra.Command{
		Use:   "kick CLIENT",
		Short: "close a client's session, telling the client why; it reconnects unless its access was removed or --ban keeps it out",
		Args:  cobra.ExactArgs(1),
	}, func(cmd *cobra.Command, c *admin.Client, args []string) error {
		body := map[string]string{"reason": reason}
		if ban > 0 {
			body["ban"] = ban.String()
		}
		var st server.SessionStatus
		if err := c.Post(cmd.Context(), "/v1/sessions/"+url.PathEscape(args[0])+"/kick", body, &st); err != nil {
			return err
		}
		if st.ID != "" {
			fmt.Fprintf(cmd.OutOrStdout(), "kicked %s (session %s from %s, %d connections)\n", st.Client, st.ID, st.Remote, st.Connections)
		}
		if ban > 0 {
			fmt.Fprintf(cmd.OutOrStdout(), "banned %s for %s (until tunneld restarts or `tunneld unban %s`)\n", st.Client, ban, st.Client)
		}
		return nil
	})
	cmd.Flags().StringVar(&reason, "reason", "", "what the client is told and logs")
	cmd.Flags().DurationVar(&ban, "ban", 0, "keep the client out this long (e.g. 10m); it keeps trying meanwhile")
	return cmd
}

func newUnban() *cobra.Command {
	return cli.AdminCommand("tunneld", &cobra.Command{
		Use:   "unban CLIENT",
		Short: "lift a ban set with kick --ban",
		Args:  cobra.ExactArgs(1),
	}, func(cmd *cobra.Command, c *admin.Client, args []string) error {
		if err := c.Post(cmd.Context(), "/v1/bans/"+url.PathEscape(args[0])+"/lift", nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "ban on %s lifted\n", args[0])
		return nil
	})
}

func newCloseConn() *cobra.Command {
	return cli.AdminCommand("tunneld", &cobra.Command{
		Use:   "close-conn ID",
		Short: "reset one public connection, by the conn id of the logs",
		Args:  cobra.ExactArgs(1),
	}, func(cmd *cobra.Command, c *admin.Client, args []string) error {
		if _, err := strconv.ParseUint(args[0], 10, 64); err != nil {
			return &cli.ExitError{Code: cli.ExitConfig, Err: fmt.Errorf("%q is not a connection id (the conn=N of the logs)", args[0])}
		}
		if err := c.Post(cmd.Context(), "/v1/connections/"+args[0]+"/close", nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "closed connection %s\n", args[0])
		return nil
	})
}

func newDrain() *cobra.Command {
	return cli.AdminCommand("tunneld", &cobra.Command{
		Use:   "drain CLIENT TUNNEL",
		Short: "stop a tunnel taking new connections and let its open ones finish",
		Args:  cobra.ExactArgs(2),
	}, func(cmd *cobra.Command, c *admin.Client, args []string) error {
		var t server.TunnelStatus
		path := "/v1/sessions/" + url.PathEscape(args[0]) + "/tunnels/" + url.PathEscape(args[1]) + "/drain"
		if err := c.Post(cmd.Context(), path, nil, &t); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "draining %s/%s (%s): %d connections open\n", args[0], t.Name, t.Public, t.Connections)
		return nil
	})
}
