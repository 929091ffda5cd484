// A function called at most once per `everyMs`: the first call of a burst
// runs at once, the rest of the burst as one call once the interval has passed
// (a burst of member events, or a replay of them, is one or two reads).
export function paced(run, everyMs) {
  let last = -Infinity;
  let timer = null;
  const fire = () => {
    timer = null;
    last = performance.now();
    run();
  };
  const call = () => {
    if (timer) return;
    const wait = last + everyMs - performance.now();
    if (wait <= 0) fire();
    else timer = setTimeout(fire, wait);
  };
  call.cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  return call;
}
