import torch, copy, io, traceback
torch.manual_seed(0)
def ref():
    torch.manual_seed(0)
    lin = torch.nn.Linear(576, 1536)
    x = torch.randn(4, 8, 576)
    return lin, x
def nbytes(m):
    seen=set(); tot=0
    for t in list(m.parameters())+list(m.buffers()):
        try:
            # tensor subclasses
            inner = [t]
            if hasattr(t, '__tensor_flatten__'):
                names,_ = t.__tensor_flatten__(); inner=[getattr(t,n) for n in names]
                flat=[]
                for i in inner:
                    if hasattr(i,'__tensor_flatten__'):
                        n2,_=i.__tensor_flatten__(); flat+= [getattr(i,n) for n in n2]
                    else: flat.append(i)
                inner=flat
            for i in inner:
                if isinstance(i, torch.Tensor):
                    k=(i.untyped_storage().data_ptr())
                    if k in seen: continue
                    seen.add(k); tot+=i.untyped_storage().nbytes()
        except Exception as e:
            print('nbytes err', type(t), e)
    return tot
def check(name, qlin, lin, x, weight_nbytes=None):
    print(f'--- {name}: type={type(qlin).__name__}')
    with torch.no_grad(): yr = lin(x.float())
    xr = x.float().clone().requires_grad_(True); lin(xr).sum().backward(); gref = xr.grad
    try:
        with torch.no_grad(): yq = qlin(x)
        print(f'  fwd ok dtype={yq.dtype}; max|err|/max|y| = {(yq.float()-yr).abs().max().item()/yr.abs().max().item():.3e}; rel fro = {((yq.float()-yr).norm()/yr.norm()).item():.3e}')
    except Exception as e:
        print('  FWD FAIL', type(e).__name__, str(e)[:300]); return
    try:
        xq = x.clone().requires_grad_(True); y = qlin(xq); y.sum().backward()
        g = xq.grad
        if g is None: print('  BWD: x.grad is None; y.requires_grad=', y.requires_grad)
        else: print(f'  bwd ok: max|gerr|/max|g| = {(g.float()-gref).abs().max().item()/gref.abs().max().item():.3e}')
        for n,p in qlin.named_parameters():
            print(f'   param {n} {type(p).__name__} requires_grad={p.requires_grad} grad={None if p.grad is None else "SET"}')
    except Exception as e:
        print('  BWD FAIL', type(e).__name__, str(e)[:300])
    try:
        with torch.no_grad(): a=qlin(x); b=qlin(x)
        print('  deterministic:', torch.equal(a,b))
    except Exception as e: print('  det fail', e)
    try:
        c = copy.deepcopy(qlin)
        with torch.no_grad(): print('  deepcopy ok, same out:', torch.equal(c(x), qlin(x)))
    except Exception as e: print('  DEEPCOPY FAIL', type(e).__name__, str(e)[:300])
    try:
        sd = qlin.state_dict(); buf=io.BytesIO(); torch.save(sd, buf); 
        print('  state_dict keys:', {k:(type(v).__name__, tuple(v.shape), str(v.dtype)) for k,v in sd.items()})
        buf.seek(0); sd2 = torch.load(buf, weights_only=False)
        print('  saved bytes', buf.getbuffer().nbytes)
        return sd2
    except Exception as e: print('  STATE_DICT FAIL', type(e).__name__, str(e)[:300])
