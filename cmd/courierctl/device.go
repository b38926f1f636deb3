package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/client"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

func tokenCmd() *cobra.Command {
	var app uint32
	var uid, secret, secretFile string
	var ttl time.Duration
	c := &cobra.Command{
		Use:   "token",
		Short: "Mint a device token (HS256 JWT) for testing",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if uid == "" {
				return usageError{errors.New("--uid is required")}
			}
			s, err := secretValue(secret, secretFile)
			if err != nil {
				return err
			}
			if err := checkApp(app); err != nil {
				return err
			}
			tok, err := gate.MintToken([]byte(s), uint16(app), uid, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), tok)
			return nil
		},
	}
	c.Flags().Uint32Var(&app, "app", 1, "appcode")
	c.Flags().StringVar(&uid, "uid", "", "uid")
	envString(c.Flags(), &secret, "secret", "COURIERCTL_SECRET", "", "the app's token secret", true)
	c.Flags().StringVar(&secretFile, "secret-file", "", "read the app's token secret from this file")
	c.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "token lifetime (at most the node's gate.max-token-lifetime, 7 days by default)")
	return c
}

// checkApp refuses an appcode that does not fit the protocol's 16 bits
// (it would wrap to another app's).
func checkApp(app uint32) error {
	if app == 0 || app > 0xFFFF {
		return usageError{fmt.Errorf("--app %d: must be in [1, 65535]", app)}
	}
	return nil
}

// secretValue returns the secret given inline or in a file (trailing
// newline removed).
func secretValue(inline, file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("--secret-file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	if inline == "" {
		return "", usageError{errors.New("--secret, --secret-file or COURIERCTL_SECRET is required")}
	}
	return inline, nil
}

// printer serialises lines from the client's goroutine and ours.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// payload shows bytes as text when they are.
func payload(b []byte) string {
	if utf8.Valid(b) {
		return strconv.Quote(string(b))
	}
	return fmt.Sprintf("%x", b)
}

// frameLine renders a frame: the inbox seq of stored messages is labelled
// inbox-seq, the frame seq of requests and answers seq.
func frameLine(out bool, h messages.Header, m proto.Message) string {
	dir := "←"
	if out {
		dir = "→"
	}
	label := "seq"
	if h.Cmd == messages.CmdS2C || h.Cmd == messages.CmdC2CPush {
		label = "inbox-seq"
	}
	z := ""
	if h.Compressed() {
		z = " zstd"
	}
	body := ""
	switch p := m.(type) {
	case nil:
	case *devicepb.S2C:
		body = fmt.Sprintf("msg_id=%s payload=%s", p.MsgId, payload(p.Payload))
	case *devicepb.C2CPush:
		body = fmt.Sprintf("msg_id=%s from=%s payload=%s", p.MsgId, p.FromUid, payload(p.Payload))
	default:
		b, _ := protojson.Marshal(m)
		body = string(b)
	}
	return fmt.Sprintf("%s %-16s %s=%-5d msgtype=%-4d%s %s", dir, h.Cmd, label, h.Seq, h.MsgType, z, body)
}

func deviceCmd() *cobra.Command {
	var addr, discover, uid, secret, secretFile, token, deviceID string
	var app uint32
	var noAck, interactive, verbose bool
	var backoffMax, tokenTTL, connectTimeout time.Duration
	var tf tlsFlags
	c := &cobra.Command{
		Use:   "device",
		Short: "Act as a demo device: log in, print pushes, acknowledge them, reconnect",
		Long: `Act as a demo device: log in, print what arrives, acknowledge it, keep the
session alive and reconnect when the connection drops (not after being
logged in elsewhere or kicked).

Standard input takes commands, one per line: "c2c UID TEXT", "c2s MSGTYPE
TEXT", "pull AFTER_SEQ", "logout". At the end of the input the device logs
out and exits (use --stdin=false to read nothing and run until Ctrl-C).

Frames are labelled with their frame seq (seq=, echoed by answers) or, for
S2C and C2C_PUSH, their inbox seq (inbox-seq=). -v shows every frame sent
and received, the acks included.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if uid == "" {
				return usageError{errors.New("--uid is required")}
			}
			if err := checkApp(app); err != nil {
				return err
			}
			if token == "" {
				if secret == "" && secretFile == "" {
					return usageError{errors.New("--token, --secret, --secret-file or COURIERCTL_SECRET is required")}
				}
				s, err := secretValue(secret, secretFile)
				if err != nil {
					return err
				}
				if token, err = gate.MintToken([]byte(s), uint16(app), uid, tokenTTL); err != nil {
					return err
				}
			}
			tlsCfg, err := tf.config()
			if err != nil {
				return err
			}
			p := &printer{w: cmd.OutOrStdout()}
			cfg := client.Config{Addr: addr, Discovery: discover, AppCode: uint16(app), UID: uid, Token: token,
				DeviceID: deviceID, Platform: devicepb.Platform_DESKTOP, AppVersion: "courierctl", ManualAck: true, TLS: tlsCfg,
				BackoffInitial: min(time.Second, backoffMax), BackoffMax: backoffMax, Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn})),
				OnState: func(s client.State, err error) {
					if err != nil {
						p.printf("%s (%v)", s, err)
					} else {
						p.printf("%s", s)
					}
				}}
			if verbose {
				cfg.OnFrame = func(out bool, h messages.Header, m proto.Message) { p.printf("%s", frameLine(out, h, m)) }
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			dctx, dcancel := ctx, context.CancelFunc(func() {})
			if connectTimeout > 0 {
				dctx, dcancel = context.WithTimeout(ctx, connectTimeout)
			}
			cl, err := client.Dial(dctx, cfg)
			dcancel()
			if err != nil {
				if ctx.Err() == nil && dctx.Err() != nil {
					return fmt.Errorf("not logged in within --connect-timeout %v: %w", connectTimeout, err)
				}
				return err
			}
			defer cl.Close()
			p.printf("logged in as %d/%s (epoch %d)", app, uid, cl.Epoch())
			go func() {
				for {
					m, err := cl.Recv(context.Background())
					if err != nil {
						return
					}
					if !verbose { // else OnFrame showed it
						cmd, from := "S2C", ""
						if m.Kind == client.KindC2C {
							cmd, from = "C2C_PUSH", " from="+m.FromUID
						}
						if m.Redelivered {
							from += " (redelivered)"
						}
						p.printf("← %-16s inbox-seq=%-5d msgtype=%-4d msg_id=%s%s payload=%s", cmd, m.Seq, m.MsgType, m.MsgID, from, payload(m.Payload))
					}
					// Printed is handled: acknowledged now (ManualAck:
					// the stdin commands' pull runs on another goroutine,
					// and must not acknowledge what this one has not
					// printed yet).
					if !noAck {
						_ = cl.Ack(context.Background(), m)
					}
				}
			}()
			eof := make(chan struct{})
			if interactive {
				go func() {
					defer close(eof)
					deviceCommands(ctx, cl, cmd.InOrStdin(), p, noAck)
				}()
			}
			select {
			case <-ctx.Done():
			case <-eof:
			case <-cl.Done():
				var ke *client.KickedError
				if errors.As(cl.Err(), &ke) {
					return fmt.Errorf("kicked out: %v %s", ke.Reason, ke.Detail)
				}
				return cl.Err()
			}
			lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := cl.Logout(lctx); err != nil {
				return fmt.Errorf("logout: %w", err)
			}
			p.printf("logged out")
			return nil
		},
	}
	envString(c.Flags(), &addr, "gate", "COURIERCTL_GATE", "127.0.0.1:7000", "gate address", false)
	c.Flags().StringVar(&discover, "discover", "", "gate discovery URL (a node's http://HOST:PORT/v1/gates); --gate is the fallback")
	c.Flags().Uint32Var(&app, "app", 1, "appcode")
	c.Flags().StringVar(&uid, "uid", "", "uid")
	envString(c.Flags(), &secret, "secret", "COURIERCTL_SECRET", "", "the app's token secret, to mint a token", true)
	c.Flags().StringVar(&secretFile, "secret-file", "", "read the app's token secret from this file")
	c.Flags().StringVar(&token, "token", "", "a token (instead of a secret)")
	c.Flags().StringVar(&deviceID, "device-id", "courierctl", "device id")
	c.Flags().BoolVar(&noAck, "no-ack", false, "do not acknowledge pushes (to watch redelivery)")
	c.Flags().BoolVar(&interactive, "stdin", true, `read commands from standard input; log out at its end`)
	c.Flags().DurationVar(&backoffMax, "backoff-max", time.Minute, "longest wait between reconnection attempts (they start at 1s and double)")
	c.Flags().DurationVar(&connectTimeout, "connect-timeout", 30*time.Second, "give up if the first login has not succeeded by then (0: keep trying, as a device does); reconnections after it are not bounded")
	c.Flags().DurationVar(&tokenTTL, "ttl", 24*time.Hour, "lifetime of the token minted from the secret (at most the node's gate.max-token-lifetime)")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "show every frame sent and received, acks and keepalives included")
	tf.bind(c, "the gate (a load balancer terminating TLS)", "COURIERCTL_GATE")
	return c
}

// deviceCommands reads commands until the end of in or ctx.
func deviceCommands(ctx context.Context, cl *client.Client, in io.Reader, p *printer, noAck bool) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.SplitN(strings.TrimSpace(sc.Text()), " ", 3)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		switch {
		case len(f) == 3 && f[0] == "c2c":
			r, err := cl.SendC2C(cctx, f[1], 0, []byte(f[2]))
			report(p, "C2C_ACK", r.MsgID, r.ClientMsgID, err)
		case len(f) == 3 && f[0] == "c2s":
			mt, err := strconv.ParseUint(f[1], 10, 16)
			if err != nil {
				p.printf("c2s: msgtype %q: %v", f[1], err)
				break
			}
			r, err := cl.SendC2S(cctx, uint16(mt), []byte(f[2]))
			report(p, "C2S_ACK", r.MsgID, r.ClientMsgID, err)
		case len(f) == 2 && f[0] == "pull":
			after, err := strconv.ParseUint(f[1], 10, 32)
			if err != nil {
				p.printf("pull: after seq %q: %v", f[1], err)
				break
			}
			r, err := cl.Pull(cctx, uint32(after), 0)
			if err != nil {
				p.printf("PULL failed: %v", err)
				break
			}
			for _, m := range r.Messages {
				p.printf("  pulled %s inbox-seq=%d msgtype=%d msg_id=%s payload=%s", m.Kind, m.Seq, m.MsgType, m.MsgID, payload(m.Payload))
				if !noAck {
					_ = cl.Ack(cctx, m)
				}
			}
			p.printf("← PULL_ACK %d messages, has_more=%v", len(r.Messages), r.HasMore)
		case len(f) == 1 && (f[0] == "logout" || f[0] == "quit"):
			cancel()
			return
		case len(f) == 1 && f[0] == "":
		default:
			p.printf(`commands: "c2c UID TEXT", "c2s MSGTYPE TEXT", "pull AFTER_SEQ", "logout"`)
		}
		cancel()
	}
}

func report(p *printer, what, msgID, clientID string, err error) {
	if err != nil {
		p.printf("%s failed: %v (client_msg_id %s)", what, err, clientID)
		return
	}
	p.printf("← %s OK msg_id=%s client_msg_id=%s", what, msgID, clientID)
}
