package store

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestReaderShedsReadsThatCannotMakeIt: a round trip is bounded by the
// earliest deadline of its batch, so one read with less time left than
// the database takes would fail every read batched with it. Such a read
// is failed on its own instead, and the fresh reads of its batch are
// answered.
func TestReaderShedsReadsThatCannotMakeIt(t *testing.T) {
	const rt = 50 * time.Millisecond
	// As readBatch: the round trip ends at the batch's earliest deadline.
	read := func(batch []readReq) error {
		deadline := batch[0].deadline
		for _, q := range batch[1:] {
			if q.deadline.Before(deadline) {
				deadline = q.deadline
			}
		}
		if left := time.Until(deadline); left < rt {
			time.Sleep(max(left, 0))
			err := fmt.Errorf("%w: context deadline exceeded", ErrUnavailable)
			for _, q := range batch {
				q.fail(err)
			}
			return err
		}
		time.Sleep(rt)
		for _, q := range batch {
			q.loaded(&Snapshot{}, nil)
		}
		return nil
	}
	r := newReader(1, 64, 16, read)
	defer r.close()
	type result struct {
		name string
		err  error
	}
	results := make(chan result, 16)
	var wg sync.WaitGroup
	load := func(name string, timeout time.Duration) {
		wg.Add(1)
		r.submit(readReq{id: Identity{App: 1, UID: name}, deadline: time.Now().Add(timeout), loaded: func(_ *Snapshot, err error) {
			results <- result{name, err}
			wg.Done()
		}})
	}
	load("warm-up", 5*time.Second) // the reader learns the round trip
	wg.Wait()
	<-results
	load("busy", 5*time.Second) // takes the worker for 50 ms
	time.Sleep(5 * time.Millisecond)
	load("stale", rt+15*time.Millisecond) // about 10 ms left when its batch forms
	for i := range 7 {
		load(fmt.Sprint("fresh", i), 5*time.Second)
	}
	wg.Wait()
	close(results)
	for res := range results {
		switch {
		case res.name == "stale" && !errors.Is(res.err, ErrUnavailable):
			t.Errorf("the stale read: %v, want ErrUnavailable", res.err)
		case res.name != "stale" && res.err != nil:
			t.Errorf("%s: %v (failed with the stale read's round trip)", res.name, res.err)
		}
	}
}

// TestReaderRecoversAfterAnOutage: round trips that fail slowly (an
// outage: connects time out) must not raise the bar a read has to clear
// to be sent, or every read would be shed for good once the database is
// back. A fresh read is always tried.
func TestReaderRecoversAfterAnOutage(t *testing.T) {
	var down sync.Mutex
	outage := true
	read := func(batch []readReq) error {
		down.Lock()
		failing := outage
		down.Unlock()
		if failing {
			time.Sleep(time.Until(batch[0].deadline)) // a connect that times out
			for _, q := range batch {
				q.fail(ErrUnavailable)
			}
			return ErrUnavailable
		}
		for _, q := range batch {
			q.loaded(&Snapshot{}, nil)
		}
		return nil
	}
	r := newReader(1, 64, 16, read)
	r.maxNeed = 250 * time.Millisecond // a quarter of a 1 s timeout
	defer r.close()
	load := func() error {
		errc := make(chan error, 1)
		r.submit(readReq{id: Identity{App: 1, UID: "u"}, deadline: time.Now().Add(time.Second), loaded: func(_ *Snapshot, err error) { errc <- err }})
		return <-errc
	}
	for range 5 {
		if err := load(); err == nil {
			t.Fatal("a read during the outage succeeded")
		}
	}
	down.Lock()
	outage = false
	down.Unlock()
	if err := load(); err != nil {
		t.Fatalf("the first read after the outage: %v", err)
	}
}
