package gate_test

import (
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
	"github.com/courier-im/courier/testkit"
	"google.golang.org/protobuf/proto"
)

// TestConnCapBelowFDLimit floods a gate whose process may open only 256
// files with 400 connections at once. The automatic cap (limit minus
// FDReserve = 192) must refuse the excess with SERVER_BUSY, and accept
// must never fail with EMFILE (gnet would stop and close everyone): the
// gate stays alive and admits again once connections leave.
func TestConnCapBelowFDLimit(t *testing.T) {
	ch := startChild(t, childNofileEnv+"=256")
	const n, want = 400, 256 - 64
	type result struct {
		c    net.Conn
		code devicepb.Code
		err  error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 32 {
				c, code, err := tryLogin(ch.addr, "flood-"+strconv.Itoa(i))
				results[i] = result{c, code, err}
			}
		}()
	}
	wg.Wait()
	var admitted []net.Conn
	refused := 0
	for i, r := range results {
		switch {
		case r.err != nil:
			t.Fatalf("connection %d: %v", i, r.err)
		case r.code == devicepb.Code_OK:
			admitted = append(admitted, r.c)
		case r.code == devicepb.Code_SERVER_BUSY:
			refused++
		default:
			t.Fatalf("connection %d: %v", i, r.code)
		}
	}
	t.Cleanup(func() {
		for _, c := range admitted {
			c.Close()
		}
	})
	if len(admitted) != want || refused != n-want {
		t.Fatalf("%d admitted, %d refused; want %d and %d", len(admitted), refused, want, n-want)
	}
	if s := ch.stats(); s.conns != want {
		t.Fatalf("gate holds %d connections", s.conns)
	}
	for _, c := range admitted[:10] {
		c.Close()
	}
	testkit.Eventually(t, wait, func() bool { return ch.stats().conns == want-10 }, "10 connections gone")
	for i := range 10 {
		c, code, err := tryLogin(ch.addr, "again-"+strconv.Itoa(i))
		if err != nil || code != devicepb.Code_OK {
			t.Fatalf("after the flood: %v %v", code, err)
		}
		admitted = append(admitted, c)
	}
}

// tryLogin dials and logs uid in; it returns the connection when the
// gate answered LOGIN_ACK OK, else the code of the LOGIN_ACK or ERROR.
func tryLogin(addr, uid string) (net.Conn, devicepb.Code, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, 0, err
	}
	tok, _ := gate.MintToken(secret1, app1, uid, time.Hour)
	login, _ := messages.AppendMessage(nil, messages.Header{Cmd: messages.CmdLogin, AppCode: app1, Seq: 1},
		&devicepb.Login{Uid: uid, Token: tok})
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write(login) // a refused connection may already be closed
	var hdr [messages.HeaderSize]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		c.Close()
		return nil, 0, err
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[14:]))
	if _, err := io.ReadFull(c, body); err != nil {
		c.Close()
		return nil, 0, err
	}
	var code devicepb.Code
	switch messages.Cmd(hdr[3]) {
	case messages.CmdLoginAck:
		var ack devicepb.LoginAck
		err = proto.Unmarshal(body, &ack)
		code = ack.Code
	case messages.CmdError:
		var e devicepb.Error
		err = proto.Unmarshal(body, &e)
		code = e.Code
	}
	if err != nil || code != devicepb.Code_OK {
		c.Close()
		return nil, code, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, code, nil
}
