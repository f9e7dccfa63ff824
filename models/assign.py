"""Label assignment and losses for PotholeNet (written for this project).

Assignment is task-aligned (the idea from the TOOD paper): for each ground-truth box, the locations inside it
are ranked by score^alpha * IoU^beta of their current prediction and the top k become positives. Their class
target is that alignment normalised to the box's best IoU, so the single sigmoid score learns to mean
"a well-localised object here" (the exported layout has no separate objectness).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + eps)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - GIoU for paired [K,4] xyxy boxes."""
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(1)
    area_t = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(1)
    union = area_p + area_t - inter + eps
    iou = inter / union
    enclose = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).prod(1) + eps
    return 1 - (iou - (enclose - union) / enclose)


@torch.no_grad()
def assign(scores: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, gt_boxes: torch.Tensor,
           gt_classes: torch.Tensor, topk: int = 10, alpha: float = 1.0,
           beta: float = 6.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: (target_scores [N,nc], target_boxes [N,4], foreground mask [N])."""
    n = scores.shape[0]
    target_scores = torch.zeros_like(scores)
    target_boxes = torch.zeros_like(boxes)
    fg = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if len(gt_boxes) == 0:
        return target_scores, target_boxes, fg
    px, py = points[:, 0][None], points[:, 1][None]
    inside = (px > gt_boxes[:, 0:1]) & (px < gt_boxes[:, 2:3]) & (py > gt_boxes[:, 1:2]) & (py < gt_boxes[:, 3:4])
    # A box smaller than the finest grid may contain no location: give it the one nearest its centre.
    empty = ~inside.any(1)
    if empty.any():
        centres = (gt_boxes[empty, :2] + gt_boxes[empty, 2:]) / 2
        nearest = torch.cdist(centres, points).argmin(1)
        inside[empty.nonzero()[:, 0], nearest] = True
    iou = box_iou(gt_boxes, boxes).clamp(min=0)
    cls_scores = scores[:, gt_classes].T
    align = cls_scores.pow(alpha) * iou.pow(beta) * inside
    k = min(topk, n)
    top = torch.zeros_like(inside)
    top.scatter_(1, (align + inside * 1e-9).topk(k, dim=1).indices, True)
    pos = top & inside
    # A location claimed by several boxes goes to the one it overlaps most.
    multi = pos.sum(0) > 1
    if multi.any():
        best = (iou * pos).argmax(0)
        pos[:, multi] = False
        pos[best[multi], multi.nonzero()[:, 0]] = True
    fg = pos.any(0)
    gt_idx = pos.float().argmax(0)
    align = align * pos
    max_align = align.amax(1, keepdim=True)
    max_iou = (iou * pos).amax(1, keepdim=True)
    norm = (align / (max_align + 1e-9) * max_iou).amax(0)
    target_boxes = gt_boxes[gt_idx]
    target_scores[fg, gt_classes[gt_idx[fg]]] = norm[fg]
    return target_scores, target_boxes, fg


def detection_loss(logits: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor,
                   targets: list[tuple[torch.Tensor, torch.Tensor]], box_weight: float = 5.0
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch loss: BCE on soft task-aligned targets plus score-weighted GIoU, both per unit of target score."""
    scores = logits.detach().sigmoid()
    t_scores, t_boxes, fgs = [], [], []
    for i, (gb, gc) in enumerate(targets):
        ts, tb, fg = assign(scores[i], boxes[i].detach(), points, gb, gc)
        t_scores.append(ts)
        t_boxes.append(tb)
        fgs.append(fg)
    t_scores = torch.stack(t_scores)
    t_boxes = torch.stack(t_boxes)
    fg = torch.stack(fgs)
    norm = t_scores.sum().clamp(min=1.0)
    cls_loss = F.binary_cross_entropy_with_logits(logits, t_scores, reduction="sum") / norm
    if fg.any():
        weight = t_scores.sum(-1)[fg]
        box_loss = (giou_loss(boxes[fg], t_boxes[fg]) * weight).sum() / norm
    else:
        box_loss = boxes.sum() * 0.0
    total = cls_loss + box_weight * box_loss
    return total, {"cls": float(cls_loss.detach()), "box": float(box_loss.detach()), "pos": int(fg.sum())}
